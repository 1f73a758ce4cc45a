"""kaito: run, tune and serve LLMs on Kubernetes (or one machine) from one Workspace object."""

__version__ = "0.1.0"
