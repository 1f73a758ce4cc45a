"""The tuning preflight's verdict, read from its pod's termination message (pure)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kaito.manifests.keys import LABEL_TUNING_STAGE
from kaito.manifests.preflight import STAGE_PREFLIGHT

# Condition type and reasons (kaito's own; upstream has no preflight).
DATASET_VALIDATED = "DatasetValidated"
PREFLIGHT_PASSED = "PreflightPassed"
PREFLIGHT_FAILED = "PreflightFailed"
PREFLIGHT_RUNNING = "PreflightRunning"
PREFLIGHT_SKIPPED = "PreflightSkipped"


@dataclass(frozen=True)
class Verdict:
    """`ok` with a one-line summary: rows and token stats, or the located problems."""

    ok: bool
    message: str


def is_preflight_pod(pod: Mapping[str, Any]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(LABEL_TUNING_STAGE) == STAGE_PREFLIGHT


def _owned_by(pod: Mapping[str, Any], uid: str | None) -> bool:
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return uid is not None and any(o.get("uid") == uid for o in owners)


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (status.get("state") or {}).get("terminated")
        if state is not None:
            return dict(state)
    return None


def issue_text(issue: Mapping[str, Any]) -> str:
    where = str(issue.get("file") or "dataset")
    if issue.get("row") is not None:
        where += f", row {issue['row']}"
    if issue.get("column") is not None:
        where += f", column {issue['column']!r}"
    return f"{where}: {issue.get('message') or 'invalid'}"


def _summary(result: Mapping[str, Any]) -> str:
    tokens = result.get("tokens") or {}
    files = result.get("file_count")
    text = f"{result.get('train_rows')} train / {result.get('eval_rows')} eval rows"
    if files is not None:
        text += f" in {files} file(s)"
    if tokens:
        text += (
            f"; tokens per row mean {tokens.get('mean')}, p95 {tokens.get('p95')}, "
            f"max {tokens.get('max')}; {tokens.get('truncated_rows')} row(s) over "
            f"max_length {tokens.get('max_length')}"
        )
    return text


def verdict(result: Mapping[str, Any]) -> Verdict:
    """A `kaito tune --check` result document as a verdict."""
    if result.get("ok") is True:
        return Verdict(True, f"dataset ok: {_summary(result)}")
    errors = [e for e in result.get("errors") or [] if isinstance(e, Mapping)]
    if errors:
        problems = "; ".join(issue_text(e) for e in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        return Verdict(False, f"dataset invalid: {problems}{more}; fix the data")
    return Verdict(False, f"preflight failed: {result.get('error') or 'no details'}")


def pod_verdict(pod: Mapping[str, Any]) -> Verdict | None:
    """The verdict a finished preflight pod left, or None while it has not finished."""
    state = _terminated(pod)
    if state is None:
        return None
    message = str(state.get("message") or "").strip()
    try:
        result = json.loads(message)
    except ValueError:
        result = None
    if isinstance(result, Mapping):
        return verdict(result)
    if int(state.get("exitCode") or 0) == 0:
        return Verdict(True, "dataset ok (no report)")
    # FallbackToLogsOnError: the tail of a crash's log is the best explanation there is.
    tail = message[-200:] if message else str(state.get("reason") or "Error")
    return Verdict(False, f"preflight exited {state.get('exitCode')}: {tail}")


def job_verdict(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Verdict | None:
    """The verdict of the preflight Job `job` from its own pods (not an older Job's)."""
    uid = (job.get("metadata") or {}).get("uid")
    for pod in pods:
        if is_preflight_pod(pod) and _owned_by(pod, uid):
            found = pod_verdict(pod)
            if found is not None:
                return found
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            detail = cond.get("message") or cond.get("reason") or "failed"
            return Verdict(False, f"preflight job failed: {detail}")
    return None
