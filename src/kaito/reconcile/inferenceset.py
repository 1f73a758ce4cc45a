"""plan_set(set, observed Workspaces) -> Workspaces to create and delete, the Service, status.

Pure, like the Workspace planner: the shell observes the set's Workspaces, this decides, the
shell applies. Replicas are Workspaces `<set>-<index>`; a template change replaces them
StatefulSet-style (RollingUpdate with maxUnavailable and partition, or OnDelete), because a
Workspace's preset and nodes cannot change in place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kaito.api.inferenceset import (
    ANNOTATION_TEMPLATE_HASH,
    API_VERSION,
    DEFAULT_UPDATE_STRATEGY,
    KIND,
    LABEL_INFERENCESET,
    MAX_REPLICAS,
    InferenceSet,
    parse_inferenceset,
    template_hash,
    workspace_body,
)
from kaito.api.workspace import parse_workspace
from kaito.manifests.context import resolve
from kaito.manifests.errors import SpecError
from kaito.manifests.keys import HTTP_PORT, SERVICE_PORT
from kaito.manifests.options import ClusterOptions
from kaito.reconcile import conditions as c
from kaito.reconcile.common import finish_status
from kaito.reconcile.conditions import Cond
from kaito.reconcile.guard import refuse_invalid
from kaito.reconcile.nodes import deleting, name_of
from kaito.reconcile.types import JSON, ObjectRef

READY = "InferenceSetReady"
NODE_LIMIT = "NodeCountLimitExceeded"
WITHIN_LIMIT = "WithinNodeCountLimit"
INVALID_TEMPLATE = "InvalidTemplate"
POLL_S = 10.0


@dataclass(frozen=True)
class SetPlan:
    """What to write for one InferenceSet; `status` is None when it did not change."""

    apply: tuple[JSON, ...] = ()
    delete: tuple[ObjectRef, ...] = ()  # the set's Workspaces
    status: JSON | None = None
    requeue_after: float | None = None
    error: SpecError | None = None


def parse_set(body: Mapping[str, Any]) -> InferenceSet | SpecError:
    try:
        return parse_inferenceset(dict(body))
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else None
        where = ".".join(str(p) for p in first["loc"]) if first else "inferenceset"
        return SpecError("InvalidInferenceSet", f"{where}: {first['msg'] if first else ''}")


def proto_workspace(iset: InferenceSet) -> JSON:
    """The Workspace the template stands for, named like the longest replica name admission
    could see, so the Workspace's name rules judge the set's names too."""
    return workspace_body(iset, MAX_REPLICAS - 1)


def per_replica_nodes(iset: InferenceSet, options: ClusterOptions) -> int:
    """Nodes one replica needs, by the same estimate the Workspace planner freezes; raises
    SpecError when the Workspace rules refuse the template."""
    try:
        ws = parse_workspace(proto_workspace(iset))
        refuse_invalid(ws, options)
        return resolve(ws, options).target_node_count
    except ValidationError as exc:
        raise SpecError(INVALID_TEMPLATE, f"spec.template: {exc.errors()[0]['msg']}") from exc
    except SpecError as error:
        raise SpecError(INVALID_TEMPLATE, f"spec.template: {error.message}") from error


def index_of(iset: InferenceSet, ws: Mapping[str, Any]) -> int | None:
    suffix = name_of(ws).removeprefix(f"{iset.name}-")
    return int(suffix) if suffix != name_of(ws) and suffix.isdigit() else None


def is_ready(ws: Mapping[str, Any]) -> bool:
    status = ws.get("status") or {}
    cond = c.find(status.get("conditions"), c.WORKSPACE_SUCCEEDED)
    return not deleting(ws) and cond is not None and cond.get("status") == "True"


def _strategy(iset: InferenceSet, desired: int) -> tuple[str, int, int]:
    """(type, maxUnavailable as a count >= 1, partition) from the StatefulSet-style field."""
    raw = iset.spec.update_strategy or DEFAULT_UPDATE_STRATEGY
    kind = str(raw.get("type") or "RollingUpdate")
    rolling = raw.get("rollingUpdate") or {}
    value = rolling.get("maxUnavailable", 1)
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        count = desired * int(value[:-1]) // 100
    else:
        count = int(value) if str(value).isdigit() else 1
    partition = rolling.get("partition", 0)
    return kind, max(1, count), int(partition) if str(partition).isdigit() else 0


def build_service(iset: InferenceSet) -> JSON:
    """Service `<set>`: one address in front of every replica's inference pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": iset.name,
            "namespace": iset.namespace,
            "labels": {LABEL_INFERENCESET: iset.name},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": iset.name,
                    "uid": iset.metadata.uid or "",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_INFERENCESET: iset.name},
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": HTTP_PORT, "protocol": "TCP"}
            ],
        },
    }


def _service_changed(desired: JSON, observed: Mapping[str, Any] | None) -> bool:
    if observed is None:
        return True
    spec = observed.get("spec") or {}
    want = desired["spec"]
    ports = [{k: p.get(k) for k in ("name", "port", "targetPort")} for p in spec.get("ports") or []]
    return spec.get("selector") != want["selector"] or ports != [
        {k: p[k] for k in ("name", "port", "targetPort")} for p in want["ports"]
    ]


def plan_set(
    body: Mapping[str, Any],
    workspaces: Sequence[JSON],
    service: Mapping[str, Any] | None,
    options: ClusterOptions,
    *,
    now: str,
) -> SetPlan:
    """Everything to do for one InferenceSet given the Workspaces it controls."""
    parsed = parse_set(body)
    if isinstance(parsed, SpecError):
        return _refused(body, parsed, now=now)
    iset = parsed
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return SetPlan()  # its Workspaces and Service go with the ownerReferences
    try:
        per = per_replica_nodes(iset, options)
    except SpecError as error:
        return _refused(body, error, now=now)

    wanted = iset.replicas
    limit = iset.spec.node_count_limit or 0
    allowed = min(wanted, limit // per) if limit else wanted
    digest = template_hash(iset)
    by_index: dict[int, JSON] = {}
    for ws in workspaces:
        index = index_of(iset, ws)
        if index is not None:
            by_index[index] = dict(ws)

    apply: list[JSON] = []
    delete: list[ObjectRef] = []

    def remove(ws: Mapping[str, Any]) -> None:
        delete.append(ObjectRef(API_VERSION, "Workspace", name_of(ws), iset.namespace))

    svc = build_service(iset)
    if _service_changed(svc, service):
        apply.append(svc)
    for index, ws in sorted(by_index.items(), reverse=True):
        if index >= allowed and not deleting(ws):
            remove(ws)
    for index in range(allowed):
        if index not in by_index:
            apply.append(workspace_body(iset, index))

    def current(ws: Mapping[str, Any]) -> bool:
        annotations = (ws.get("metadata") or {}).get("annotations") or {}
        return bool(annotations.get(ANNOTATION_TEMPLATE_HASH) == digest)

    kind, max_unavailable, partition = _strategy(iset, allowed)
    outdated = [
        i
        for i in range(allowed - 1, -1, -1)
        if i in by_index and not deleting(by_index[i]) and not current(by_index[i])
    ]
    if kind == "RollingUpdate":
        unavailable = sum(
            1 for i in range(allowed) if i not in by_index or not is_ready(by_index[i])
        )
        budget = max(0, max_unavailable - unavailable)
        # Highest index first, indices below the partition keep the old template.
        for index in [i for i in outdated if i >= partition][:budget]:
            remove(by_index[index])

    live = [ws for i, ws in by_index.items() if not deleting(ws)]
    ready = sum(1 for i, ws in by_index.items() if i < allowed and is_ready(ws))
    conds = [
        Cond(
            READY,
            "True" if ready == wanted and not outdated else "False",
            "ReplicasReady" if ready == wanted and not outdated else "ReplicasNotReady",
            f"{ready}/{wanted} replicas ready"
            + (f", {len(outdated)} on an older template" if outdated else ""),
        )
    ]
    if allowed < wanted:
        conds.append(
            Cond(
                NODE_LIMIT,
                "True",
                NODE_LIMIT,
                f"{wanted} replicas need {wanted * per} nodes ({per} per replica), more than "
                f"nodeCountLimit {limit}: running {allowed}; raise nodeCountLimit or lower "
                "replicas",
            )
        )
    else:
        conds.append(
            Cond(NODE_LIMIT, "False", WITHIN_LIMIT, f"{wanted * per} nodes within the limit")
        )
    status = finish_status(
        body,
        conds,
        now=now,
        replicas=len(live),
        readyReplicas=ready,
        selector=iset.selector,
    )
    settled = ready == allowed and not outdated and not delete and len(live) == allowed
    return SetPlan(
        apply=tuple(apply),
        delete=tuple(delete),
        status=status,
        requeue_after=None if settled else POLL_S,
    )


def _refused(body: Mapping[str, Any], error: SpecError, *, now: str) -> SetPlan:
    status = finish_status(body, [Cond.of(READY, False, error.reason, error.message)], now=now)
    return SetPlan(status=status, error=error)
