"""Node and NodeClaim arithmetic: which nodes qualify, which claims are ready, what to create."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kaito.manifests.context import WorkspaceContext
from kaito.manifests.keys import GPU_RESOURCE, LABEL_GPU_COUNT, LABEL_INSTANCE_TYPE, LABEL_NODEPOOL
from kaito.manifests.nodeclaim import nodeclaim_name
from kaito.reconcile.conditions import find

JSON = dict[str, Any]


def name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def deleting(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def node_ready(node: Mapping[str, Any]) -> bool:
    cond = find((node.get("status") or {}).get("conditions"), "Ready")
    return not deleting(node) and cond is not None and cond.get("status") == "True"


def node_gpus(node: Mapping[str, Any]) -> int:
    """GPUs the node advertises (capacity, else the GPU feature discovery label)."""
    status = node.get("status") or {}
    for source in (status.get("allocatable"), status.get("capacity")):
        value = (source or {}).get(GPU_RESOURCE)
        if value is not None:
            try:
                return int(str(value))
            except ValueError:
                return 0
    label = labels_of(node).get(LABEL_GPU_COUNT)
    return int(label) if label and label.isdigit() else 0


def matches_selector(node: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    node_labels = labels_of(node)
    return all(node_labels.get(k) == v for k, v in labels.items())


def claim_ready(claim: Mapping[str, Any]) -> bool:
    """Ready=True, or (with no Ready condition yet) a node name (upstream §8.1)."""
    if deleting(claim):
        return False
    status = claim.get("status") or {}
    cond = find(status.get("conditions"), "Ready")
    if cond is not None:
        return cond.get("status") == "True"
    return bool(status.get("nodeName"))


def claim_node_name(claim: Mapping[str, Any]) -> str:
    return str((claim.get("status") or {}).get("nodeName") or "")


@dataclass(frozen=True)
class NodePicture:
    """The node situation of one workspace, computed from observed nodes and claims."""

    ready_nodes: tuple[str, ...]  # qualifying ready nodes the workload may use
    byo_nodes: tuple[str, ...]  # of those, nodes not created for this workspace
    needed_claims: int
    live_claims: tuple[JSON, ...]  # not deleting
    ready_claims: tuple[JSON, ...]
    to_create: tuple[int, ...]  # indices of the NodeClaims to create now (names hash them)
    gpus_per_node: int | None  # from the first qualifying node (BYO GPU config)
    pressure: tuple[str, ...] = ()  # "node (DiskPressure, ...)" for ready nodes under pressure

    @property
    def claims_ready(self) -> bool:
        return len(self.ready_claims) >= self.needed_claims


PRESSURE_TYPES = ("DiskPressure", "MemoryPressure", "PIDPressure")


def pressure_of(node: Mapping[str, Any]) -> str | None:
    """ "name (DiskPressure, ...)" when the node reports resource pressure, else None."""
    conditions = (node.get("status") or {}).get("conditions") or []
    kinds = [
        t
        for t in PRESSURE_TYPES
        if any(c.get("type") == t and c.get("status") == "True" for c in conditions)
    ]
    return f"{name_of(node)} ({', '.join(kinds)})" if kinds else None


def _pressure(nodes: Sequence[JSON], names: Sequence[str]) -> tuple[str, ...]:
    by_name = {name_of(n): n for n in nodes}
    found = (pressure_of(by_name[n]) for n in names if n in by_name)
    return tuple(p for p in found if p)


def qualifies(
    node: Mapping[str, Any], instance_type: str, preferred: Sequence[str], *, on_cpu: bool = False
) -> bool:
    """Ready, has GPUs (unless the workload runs on CPU), and is the requested instance type
    (or named in preferredNodes)."""
    if not node_ready(node) or (not on_cpu and node_gpus(node) <= 0):
        return False
    if name_of(node) in preferred or not instance_type:
        return True
    return labels_of(node).get(LABEL_INSTANCE_TYPE, "").lower() == instance_type.lower()


def picture(
    ctx: WorkspaceContext, nodes: Sequence[JSON], claims: Sequence[JSON], *, use_claims: bool
) -> NodePicture:
    ws = ctx.workspace
    instance_type = ws.instance_type
    preferred = list(ws.resource.preferred_nodes or []) if ws.resource else []
    selector = ctx.match_labels
    live = tuple(c for c in claims if not deleting(c))
    claimed = {claim_node_name(c) for c in live if claim_node_name(c)}
    candidates = [n for n in nodes if matches_selector(n, selector) or name_of(n) in preferred]
    usable = [n for n in candidates if qualifies(n, instance_type, preferred, on_cpu=ctx.on_cpu)]
    by_name = {name_of(n): n for n in nodes}
    if not use_claims:
        names = tuple(sorted(name_of(n) for n in usable))
        first = usable[0] if usable else None
        return NodePicture(
            ready_nodes=names,
            byo_nodes=names,
            needed_claims=0,
            live_claims=(),
            ready_claims=(),
            to_create=(),
            gpus_per_node=node_gpus(first) if first is not None else None,
            pressure=_pressure(nodes, names),
        )
    byo = [n for n in usable if name_of(n) not in claimed and LABEL_NODEPOOL not in labels_of(n)]
    needed = max(0, ctx.target_node_count - len(byo))
    missing = max(0, needed - len(live))
    taken = {name_of(c) for c in claims}
    to_create: list[int] = []
    index = 0
    while len(to_create) < missing:
        if nodeclaim_name(ctx.namespace, ctx.name, index) not in taken:
            to_create.append(index)
        index += 1
    ready_claims = tuple(c for c in live if claim_ready(c))
    claim_nodes = [
        name
        for c in ready_claims
        if (name := claim_node_name(c)) in by_name
        and qualifies(by_name[name], instance_type, preferred, on_cpu=ctx.on_cpu)
    ]
    ready = sorted({*claim_nodes, *(name_of(n) for n in byo)})
    return NodePicture(
        ready_nodes=tuple(ready),
        byo_nodes=tuple(sorted(name_of(n) for n in byo)),
        needed_claims=needed,
        live_claims=live,
        ready_claims=ready_claims,
        to_create=tuple(to_create),
        gpus_per_node=None,
        pressure=_pressure(nodes, ready),
    )
