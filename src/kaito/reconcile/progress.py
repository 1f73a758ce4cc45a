"""Tuning progress for `status.tuning`: from the tuning pod's annotation, kept after it ends."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from kaito.manifests.keys import ANNOTATION_TUNING_PROGRESS

JSON = dict[str, Any]

PHASES = frozenset(
    {"preparing", "loading", "training", "saving", "completed", "failed", "interrupted"}
)
# progress.json key -> status.tuning key, with the type each must have to be copied.
_INTS = {"step": "step", "total_steps": "totalSteps", "resumed_from_step": "resumedFromStep"}
_FLOATS = {
    "epoch": "epoch",
    "loss": "loss",
    "eval_loss": "evalLoss",
    "learning_rate": "learningRate",
    "tokens_per_second": "tokensPerSecond",
    "eta_seconds": "etaSeconds",
}
_STRINGS = {"started_at": "startedAt", "updated_at": "updatedAt"}
# Fields the CRD bounds below by 0; a negative value would make the whole status write fail.
_NON_NEGATIVE = {"step", "totalSteps", "resumedFromStep", "epoch", "tokensPerSecond", "etaSeconds"}


def parse_progress(text: str | None) -> JSON | None:
    """A progress.json document (as the runtime writes it) as `status.tuning`, or None.

    Whatever a pod writes is untrusted input to a status the CRD validates: unknown keys and
    values of the wrong type are dropped instead of failing the status write.
    """
    try:
        raw = json.loads(text or "")
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    out: JSON = {}
    for key, target in _INTS.items():
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[target] = value
    for key, target in _FLOATS.items():
        value = raw.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[target] = float(value) if isinstance(value, float) else value
    for key, target in _STRINGS.items():
        value = raw.get(key)
        if isinstance(value, str) and value:
            out[target] = value[:64]
    out = {k: v for k, v in out.items() if k not in _NON_NEGATIVE or v >= 0}
    phase = raw.get("phase")
    if isinstance(phase, str) and phase in PHASES:
        out["phase"] = phase
    message = raw.get("message")
    if isinstance(message, str) and message:
        out["message"] = message[:1024]
    total, step = out.get("totalSteps"), out.get("step")
    if isinstance(total, int) and total > 0 and isinstance(step, int):
        out["progressPercent"] = min(100, step * 100 // total)
    if out.get("phase") == "completed":
        out["progressPercent"] = 100
    return out or None


def _annotation(pod: Mapping[str, Any]) -> str | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(ANNOTATION_TUNING_PROGRESS)
    return value if isinstance(value, str) else None


def pods_progress(pods: Sequence[Mapping[str, Any]]) -> JSON | None:
    """The most recent report among the Job's pods (a replaced pod's report is older)."""
    reports = [p for p in (parse_progress(_annotation(pod)) for pod in pods) if p is not None]
    if not reports:
        return None
    return max(reports, key=lambda report: str(report.get("updatedAt") or ""))


def pushed_adapter(pods: Sequence[Mapping[str, Any]]) -> JSON | None:
    """{adapterImage, adapterDigest} from a pusher's termination message (its JSON result)."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != "pusher":
                continue
            state = (status.get("state") or {}).get("terminated") or {}
            try:
                result = json.loads(state.get("message") or "")
            except ValueError:
                continue
            pushed = result.get("pushed") if isinstance(result, dict) else None
            if isinstance(pushed, dict) and isinstance(pushed.get("digest"), str):
                return {
                    "adapterImage": str(pushed.get("reference") or "")[:1024],
                    "adapterDigest": pushed["digest"][:128],
                }
    return None


def tuning_status(
    old: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]], restarts: int
) -> JSON | None:
    """`status.tuning`: the latest pod report, else the last one written (final metrics stay
    after the pods are gone), how often the Job replaced a failed pod, and the pushed
    adapter's reference and digest once the pusher reported them."""
    current = pods_progress(pods)
    out = dict(current if current is not None else (old or {}))
    if restarts > 0:
        out["restarts"] = restarts
    adapter = pushed_adapter(pods)
    for key in ("adapterImage", "adapterDigest"):
        value = (adapter or {}).get(key) or (old or {}).get(key)
        if value:
            out[key] = value
    return out or None
