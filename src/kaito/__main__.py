"""`python -m kaito` runs the CLI."""

from kaito.cli.main import app

app()
