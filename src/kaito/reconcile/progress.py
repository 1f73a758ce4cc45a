"""Tuning progress for `status.tuning`: from the tuning pod's annotation, kept after it ends."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kaito.api.workspace import TuningProgress
from kaito.contract import progress
from kaito.contract.result import read_pushed

JSON = dict[str, Any]

# progress.json field -> status.tuning key, for each field the status declares.
_STATUS_KEYS = {
    f.name: str(TuningProgress.model_fields[f.name].alias)
    for f in dataclasses.fields(progress.Progress)
    if f.name in TuningProgress.model_fields
}
# Longest string the status keeps per field (the CRD bounds message; times are short).
_MAX_CHARS = {"message": 1024}
_DEFAULT_MAX_CHARS = 64
# Fields the CRD bounds below by 0; a negative value would make the whole status write fail.
_NON_NEGATIVE = {"step", "totalSteps", "resumedFromStep", "epoch", "tokensPerSecond", "etaSeconds"}


def parse_progress(text: str | None) -> JSON | None:
    """A progress.json document (as the runtime writes it) as `status.tuning`, or None.

    Whatever a pod writes is untrusted input to a status the CRD validates: the contract's
    reader drops unknown keys and wrongly typed values, and this drops what the CRD would
    refuse, instead of failing the status write.
    """
    fields = progress.read(text)
    if fields is None:
        return None
    out: JSON = {}
    for name, value in fields.items():
        key = _STATUS_KEYS.get(name)
        if key is None or (isinstance(value, str) and not value):
            continue
        if isinstance(value, str):
            value = value[: _MAX_CHARS.get(name, _DEFAULT_MAX_CHARS)]
        elif key in _NON_NEGATIVE and value < 0:
            continue
        out[key] = value
    total, step = out.get("totalSteps"), out.get("step")
    if isinstance(total, int) and total > 0 and isinstance(step, int):
        out["progressPercent"] = min(100, step * 100 // total)
    if out.get("phase") == "completed":
        out["progressPercent"] = 100
    return out or None


def _annotation(pod: Mapping[str, Any]) -> str | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(progress.ANNOTATION)
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
            pushed = read_pushed(state.get("message"))
            if pushed is not None:
                reference, digest = pushed
                return {"adapterImage": reference[:1024], "adapterDigest": digest[:128]}
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
