"""A failed reconcile pass in the Workspace's status: its condition, its Event, its backoff."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError

from kaito.k8s.client import api_message, status_code
from kaito.k8s.ownership import WRITE_REASONS, ChildWriteError, NameConflictError
from kaito.reconcile import conditions as c
from kaito.reconcile.conditions import Cond

JSON = dict[str, Any]
# Present (status True) only while passes fail; removed by the first pass that succeeds.
RECONCILE_ERROR = "ReconcileError"
# Retryable errors (409, 429, 5xx) are retried this many times quickly before they are
# reported: a conflict with a concurrent writer usually resolves by itself.
QUIET_RETRIES = 3
QUIET_RETRY_S = 1.0
FAILURE_MESSAGE_LIMIT = 1024


class NodeClaimLimitError(Exception):
    """Creating the Workspace's NodeClaims would pass the cluster-wide total."""

    reason = "NodeClaimLimitReached"

    def __init__(self, wanted: int, existing: int, limit: int) -> None:
        self.message = (
            f"{wanted} more NodeClaim(s) would pass the limit of {limit} for all Workspaces "
            f"({existing} exist; KAITO_MAX_NODECLAIMS_TOTAL, chart value "
            "limits.maxNodeClaimsTotal): retried as others are deleted"
        )
        super().__init__(self.message)


@dataclass(frozen=True)
class Failure:
    """Why a pass failed: a PascalCase reason and a message naming the object."""

    reason: str
    message: str
    retryable: bool = False


def failure_of(error: BaseException) -> Failure | None:
    """The failure to report for an error, or None for one that is not the API's answer."""
    if isinstance(error, NameConflictError | NodeClaimLimitError):
        return Failure(error.reason, error.message)
    if isinstance(error, ChildWriteError):
        return Failure(error.reason, error.message, error.retryable)
    if isinstance(error, ApiError):
        code = status_code(error)
        reason = WRITE_REASONS.get(code, "ApiError")
        message = f"reading the Workspace's objects failed ({code}): {api_message(error)}"
        return Failure(reason, message, code in (409, 429) or code >= 500)
    return None


def backoff_seconds(failures: int, base: float, cap: float) -> float:
    """base, 2 base, 4 base, ... after the 1st, 2nd, 3rd failure in a row, at most cap."""
    exponent = min(max(failures - 1, 0), 30)
    return float(min(base * (2**exponent), max(cap, base)))


def failed_status(
    status: Mapping[str, Any], failure: Failure, *, generation: int, now: str
) -> JSON | None:
    """The status with the failure in ReconcileError and WorkspaceSucceeded; None when the
    status says so already (a failure that recurs writes nothing new)."""
    # The apiserver's message is the one the user needs (admission policies quote theirs at
    # the end): a longer limit than the planner's short messages.
    message = c.truncate(failure.message, FAILURE_MESSAGE_LIMIT)
    conds = [
        Cond(RECONCILE_ERROR, "True", failure.reason, message),
        Cond(c.WORKSPACE_SUCCEEDED, "False", failure.reason, message),
    ]
    new = dict(status)
    new["conditions"] = c.merge_conditions(
        status.get("conditions"), conds, generation=generation, now=now
    )
    return None if new == dict(status) else new


def recovered_status(status: Mapping[str, Any]) -> JSON | None:
    """The status without ReconcileError, or None when it has none."""
    conditions = status.get("conditions") or []
    kept = [cond for cond in conditions if cond.get("type") != RECONCILE_ERROR]
    if len(kept) == len(conditions):
        return None
    return {**status, "conditions": kept}
