"""The operator/runtime contract: file names, mounts, config sections, progress (stdlib only)."""
