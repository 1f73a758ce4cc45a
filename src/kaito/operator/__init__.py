"""kopf wiring for the Workspace controller: handlers, admission webhook, settings, entry point."""
