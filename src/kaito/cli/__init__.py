"""The `kaito` command line."""
