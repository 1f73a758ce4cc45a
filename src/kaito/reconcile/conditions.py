"""Workspace conditions: upstream's types and reasons, plus pod-derived failure reasons."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
MESSAGE_LIMIT = 256

# Types (upstream §5).
RESOURCE_READY = "ResourceReady"
NODECLAIM_READY = "NodeClaimReady"
NODES_READY = "NodesReady"
INFERENCE_READY = "InferenceReady"
JOB_STARTED = "JobStarted"
WORKSPACE_SUCCEEDED = "WorkspaceSucceeded"
WORKSPACE_DELETING = "WorkspaceDeleting"

# Reasons (upstream spells some camelCase; clients match them exactly).
RESOURCE_SUCCESS = "workspaceResourceStatusSuccess"
RESOURCE_NOT_READY = "workspaceResourceStatusNotReady"
NODECLAIMS_READY = "NodeClaimsReady"
NODECLAIM_NOT_READY = "NodeClaimNotReady"
NODES_READY_REASON = "NodesReady"
NODE_NOT_READY = "NodeNotReady"
INFERENCE_SUCCESS = "WorkspaceInferenceStatusSuccess"
INFERENCE_PENDING = "WorkspaceInferenceStatusPending"
JOB_FAILED = "WorkspaceTuningJobStatusFailed"
JOB_STARTED_REASON = "WorkspaceTuningJobStatusStarted"
JOB_PENDING = "WorkspaceTuningJobStatusPending"
SUCCEEDED = "workspaceSucceeded"
FAILED = "workspaceFailed"
PENDING = "workspacePending"
DELETED = "workspaceDeleted"

IMAGE_PULL_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "ErrImageNeverPull",
        "ImageInspectError",
        "RegistryUnavailable",
    }
)
START_REASONS = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "PreStartHookError",
        "PostStartHookError",
        "ContainerCannotRun",
    }
)
# Reasons from a Launched/Registered/Initialized condition that only mean "not done yet".
WAITING_NODECLAIM_REASONS = frozenset({"AwaitingReconciliation", "NotLaunched", "Unknown", ""})


@dataclass(frozen=True)
class Cond:
    """A condition to write; lastTransitionTime is filled in when the status changes."""

    type: str
    status: str
    reason: str
    message: str

    @staticmethod
    def of(type_: str, ok: bool, reason: str, message: str) -> Cond:
        return Cond(type_, "True" if ok else "False", reason, truncate(message))


def truncate(message: str, limit: int = MESSAGE_LIMIT) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found.get("status") == "True"


@dataclass(frozen=True)
class PodProblem:
    """Why a workspace pod is not serving: an upstream reason plus the kubelet's message."""

    reason: str
    message: str
    rank: int


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    """The most telling problem of one pod, ranked as upstream checks them (§5)."""
    name = (pod.get("metadata") or {}).get("name", "pod")
    status = pod.get("status") or {}
    found: list[PodProblem] = []
    for cs in _statuses(pod):
        container = cs.get("name", "container")
        state = cs.get("state") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        terminated = state.get("terminated") or {}
        waiting = state.get("waiting") or {}
        if "OOMKilled" in (terminated.get("reason"), last.get("reason")):
            found.append(
                PodProblem(
                    "ContainerOOMKilled",
                    f"pod {name} container {container} was OOM-killed: use a larger instance "
                    "type or lower the memory use",
                    1,
                )
            )
        reason = waiting.get("reason") or ""
        detail = waiting.get("message") or ""
        if reason in IMAGE_PULL_REASONS:
            found.append(PodProblem("ImagePullError", f"pod {name}: {reason}: {detail}", 2))
        elif reason in START_REASONS:
            found.append(PodProblem("ContainerStartError", f"pod {name}: {reason}: {detail}", 3))
        elif reason == "CrashLoopBackOff":
            exit_info = f" (last exit code {last['exitCode']})" if "exitCode" in last else ""
            found.append(
                PodProblem(
                    "ContainerCrashLoopBackOff",
                    f"pod {name} container {container} is crash-looping{exit_info}: {detail}",
                    4,
                )
            )
    if status.get("reason") == "Evicted":
        found.append(PodProblem("PodEvicted", f"pod {name}: {status.get('message', '')}", 5))
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            found.append(PodProblem("Unschedulable", f"pod {name}: {cond.get('message', '')}", 6))
    return min(found, key=lambda p: p.rank) if found else None


def pods_problem(pods: Sequence[Mapping[str, Any]]) -> PodProblem | None:
    problems = [p for p in (pod_problem(pod) for pod in pods) if p is not None]
    return min(problems, key=lambda p: p.rank) if problems else None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    return is_true((pod.get("status") or {}).get("conditions"), "Ready")


def nodeclaim_problem(claims: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The first non-True lifecycle condition across claims (Launched, Registered,
    Initialized); real errors win over "still waiting" reasons (upstream §5)."""
    waiting: tuple[str, str] | None = None
    for stage in ("Launched", "Registered", "Initialized"):
        for claim in claims:
            cond = find((claim.get("status") or {}).get("conditions"), stage)
            if cond is None or cond.get("status") == "True":
                continue
            reason = str(cond.get("reason") or "")
            message = str(cond.get("message") or "")
            name = (claim.get("metadata") or {}).get("name", "")
            pair = (reason or NODECLAIM_NOT_READY, truncate(f"NodeClaim {name}: {message}"))
            if cond.get("status") == "False" and reason not in WAITING_NODECLAIM_REASONS:
                return pair
            waiting = waiting or pair
    return waiting


def merge_conditions(
    old: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Cond],
    *,
    generation: int,
    now: str,
    remove: Iterable[str] = (),
) -> list[JSON]:
    """New conditions in a stable order; a condition keeps its time while its status holds."""
    previous = {c.get("type"): c for c in old or []}
    removed = set(remove)
    out: list[JSON] = []
    written = set()
    for cond in new:
        before = previous.get(cond.type)
        since = (
            before.get("lastTransitionTime")
            if before is not None and before.get("status") == cond.status
            else now
        )
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": since or now,
            }
        )
        written.add(cond.type)
    # Conditions this controller no longer computes (and did not drop on purpose) stay.
    for type_, kept in previous.items():
        if type_ not in written and type_ not in removed and type_ is not None:
            out.append(dict(kept))
    return out
