"""The only module that talks to the Kubernetes API (lightkube's async client)."""
