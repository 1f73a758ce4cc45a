"""progress.json: the tuning runtime writes it (file and pod annotation), the operator reads it.

One schema (`Progress`), one writer (`Progress.dumps`) and one reader (`read`). The reader
treats the document as untrusted: unknown keys and values of the wrong type are dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

PROGRESS_FILE = "progress.json"
# On the tuning pod: the same document, written by the pod itself (docs/operator.md).
ANNOTATION = "kaito.sh/tuning-progress"

# Phases in the order a run passes through them; `failed`/`interrupted` end a run early.
Phase = Literal["preparing", "loading", "training", "saving", "completed", "failed", "interrupted"]
PHASES: tuple[Phase, ...] = typing.get_args(Phase)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Progress:
    """The progress document; field names are the file's schema (see docs/tuning.md)."""

    phase: Phase = "preparing"
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    tokens_seen: int = 0
    eta_seconds: float | None = None
    resumed_from_step: int | None = None
    message: str = ""
    started_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        """The document as written to the file and the annotation (keys sorted)."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True)


def _accepts(kind: Any, value: Any) -> bool:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return value is not None and any(_accepts(k, value) for k in typing.get_args(kind))
    if typing.get_origin(kind) is Literal:
        return value in typing.get_args(kind)
    if isinstance(value, bool):
        return kind is bool
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return kind is str and isinstance(value, str)


_KINDS = typing.get_type_hints(Progress)


def read(text: str | bytes | None) -> dict[str, Any] | None:
    """The fields of a progress document that have the schema's type (absent and null ones
    left out), or None when `text` is not a JSON object."""
    try:
        raw = json.loads(text or "")
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    return {name: raw[name] for name, kind in _KINDS.items() if _accepts(kind, raw.get(name))}
