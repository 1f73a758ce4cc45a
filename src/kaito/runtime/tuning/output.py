"""The results directory: adapter, tokenizer, lineage metadata and the completion sentinel."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SENTINEL = "fine_tuning_completed.txt"
METADATA = "tuning_metadata.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_complete(output_dir: Path) -> bool:
    """A run is complete only when the sentinel and both adapter files exist."""
    return all((output_dir / n).is_file() for n in (SENTINEL, ADAPTER_CONFIG, ADAPTER_WEIGHTS))


def read_metadata(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / METADATA
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else None


def clear_completion(output_dir: Path) -> None:
    """Forget an earlier result so a new run never leaves the old sentinel in place."""
    (output_dir / SENTINEL).unlink(missing_ok=True)


def publish(
    output_dir: Path, write: Callable[[Path], None], metadata: dict[str, Any]
) -> list[Path]:
    """Let `write` fill a staging directory, then move its files in and write the sentinel.

    Consumers (the pusher, local mode) key on the sentinel, which is written last and
    atomically; the weights file is moved just before it. A crash at any point leaves no
    sentinel, so a partial result is never mistaken for a finished one.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    clear_completion(output_dir)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_dir))
    try:
        write(staging)
        (staging / METADATA).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        names = sorted(p.name for p in staging.iterdir() if p.is_file())
        # The weights go last among the files: adapter_config.json alone is not loadable.
        names.sort(key=lambda n: n == ADAPTER_WEIGHTS)
        moved = []
        for name in names:
            os.replace(staging / name, output_dir / name)
            moved.append(output_dir / name)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d-%H-%M-%S")
        tmp = output_dir / f".{SENTINEL}.tmp"
        tmp.write_text(f"Fine-Tuning completed at {stamp}", encoding="utf-8")
        os.replace(tmp, output_dir / SENTINEL)
        moved.append(output_dir / SENTINEL)
        return moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)
