"""OCI artifacts for the runtimes: images whose files live under /data (adapters, datasets)."""
