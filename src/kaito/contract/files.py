"""Where the operator mounts things in a pod and what the runtimes find there by default."""

from __future__ import annotations

import posixpath

# Every path a user may name for tuning output resolves under this root (upstream).
MOUNT_ROOT = "/mnt"
CONFIG_MOUNT = f"{MOUNT_ROOT}/config"
DATA_DIR = f"{MOUNT_ROOT}/data"
ADAPTER_DIR = f"{MOUNT_ROOT}/adapter"
# The results volume when the config names no output_dir the Job can use.
RESULTS_DIR = f"{MOUNT_ROOT}/results"
# TrainingArguments.output_dir when the config names none.
DEFAULT_OUTPUT_DIR = f"{MOUNT_ROOT}/output"
# Model weights: pulled or baked in by the operator, the runtimes' default model.
WEIGHTS_DIR = "/workspace/weights"

# Keys of the config ConfigMaps, and so the file names under CONFIG_MOUNT.
TRAINING_CONFIG_FILE = "training_config.yaml"
INFERENCE_CONFIG_FILE = "inference_config.yaml"
TRAINING_CONFIG_PATH = f"{CONFIG_MOUNT}/{TRAINING_CONFIG_FILE}"
INFERENCE_CONFIG_PATH = f"{CONFIG_MOUNT}/{INFERENCE_CONFIG_FILE}"

# Internal hosts the tuning downloader may fetch datasets from: the operator's setting of
# the same name, passed to the data-downloader container (docs/tuning.md).
TUNING_ALLOWED_HOSTS_ENV = "KAITO_TUNING_ALLOWED_HOSTS"

# Registries (host or host:port, comma-separated) the runtime's OCI client talks plain HTTP
# to besides loopback ones: the operator's setting of the same name, passed to every runtime
# container it creates (docs/operator.md).
PLAIN_HTTP_REGISTRIES_ENV = "KAITO_PLAIN_HTTP_REGISTRIES"

# The inference server's API key: the Secret entry the operator mounts, and where it lands
# (the server reads it with --api-key-file; the key never appears in args or env).
# Registry credentials (dockerconfigjson Secrets) mounted for pullers and the pusher: not under
# /root, which the runtime's non-root user cannot enter.
DOCKER_CONFIG_DIR = "/etc/kaito/docker"
API_KEY_SECRET_KEY = "api-key"
API_KEY_DIR = "/etc/kaito/api-key"
API_KEY_PATH = f"{API_KEY_DIR}/{API_KEY_SECRET_KEY}"


def under_mount_root(value: str) -> str | None:
    """`value` (relative paths under MOUNT_ROOT) as a normalized path strictly inside
    MOUNT_ROOT, or None when it escapes it or is MOUNT_ROOT itself."""
    path = posixpath.normpath(posixpath.join(MOUNT_ROOT, value.strip()))
    return path if path.startswith(f"{MOUNT_ROOT}/") else None
