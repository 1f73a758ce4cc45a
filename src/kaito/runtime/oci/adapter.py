"""LoRA adapters as OCI images, in upstream KAITO's layout so upstream's puller can read them."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kaito.runtime.oci.image import PullResult, PushResult, pull_image_data, push_data_image
from kaito.runtime.oci.registry import ANNOTATION_MODEL

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Pushed beside the adapter so a consumer gets tokenizer, chat template and lineage too;
# upstream's consumers read only the two adapter files and ignore the rest.
EXTRA_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tuning_metadata.json",
)
ANNOTATION_PREFIX = "sh.kaito.tuning."


class AdapterError(ValueError):
    """A directory is not a complete adapter."""


def adapter_files(adapter_dir: Path) -> dict[str, Path]:
    """The files to publish from `adapter_dir`; both adapter files are required."""
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise AdapterError(f"{adapter_dir} is not an adapter: missing {', '.join(missing)}")
    names = ADAPTER_FILES + EXTRA_FILES
    return {name: adapter_dir / name for name in names if (adapter_dir / name).is_file()}


def lineage_annotations(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Manifest annotations from tuning metadata (base model, revision, datasets, method)."""
    base = metadata.get("base_model", {})
    out = {
        f"{ANNOTATION_PREFIX}base-model": str(base.get("name_or_path", "")),
        f"{ANNOTATION_PREFIX}base-revision": str(base.get("revision", "")),
        f"{ANNOTATION_PREFIX}method": str(metadata.get("method", "")),
        f"{ANNOTATION_PREFIX}datasets": ",".join(
            str(d.get("sha256", "")) for d in metadata.get("datasets", [])
        ),
        "org.opencontainers.image.created": str(metadata.get("finished_at", "")),
    }
    return {k: v for k, v in out.items() if v}


def push_adapter(
    adapter_dir: Path,
    ref: str,
    *,
    model_name: str,
    docker_config: Path | None = None,
    insecure: bool | None = None,
    attempts: int = 4,
    backoff_s: float = 1.0,
    log: Callable[[str], None] = lambda _message: None,
) -> PushResult:
    """Push `adapter_dir` as `ref`: one tar+gzip layer with data/adapter_* and lineage files.

    The caller keeps the directory until this returns: nothing is deleted on failure.
    """
    files = adapter_files(adapter_dir)
    annotations = {ANNOTATION_MODEL: model_name}
    metadata_path = adapter_dir / "tuning_metadata.json"
    if metadata_path.is_file():
        annotations.update(lineage_annotations(json.loads(metadata_path.read_text())))
    return push_data_image(
        ref,
        files,
        annotations=annotations,
        docker_config=docker_config,
        insecure=insecure,
        attempts=attempts,
        backoff_s=backoff_s,
        log=log,
    )


def pull_adapter(
    ref: str,
    dest: Path,
    *,
    docker_config: Path | None = None,
    insecure: bool | None = None,
) -> PullResult:
    """Pull an adapter image's /data into `dest` and check it is a complete adapter."""
    result = pull_image_data(ref, dest, docker_config=docker_config, insecure=insecure)
    adapter_files(dest)
    return result
