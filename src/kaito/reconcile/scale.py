"""Workspace replicas (the scale subresource): node totals, status fields, claims to release."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kaito.api.workspace import Workspace
from kaito.manifests.context import WorkspaceContext
from kaito.manifests.errors import SpecError
from kaito.manifests.keys import LABEL_WORKSPACE
from kaito.manifests.nodeclaim import NODECLAIM_API_VERSION
from kaito.reconcile.nodes import NodePicture, claim_node_name, claim_ready, deleting, name_of
from kaito.reconcile.types import JSON, ObjectRef

MULTI_NODE_REPLICAS = "MultiNodeReplicasUnsupported"


def frozen_per_replica(old: Mapping[str, Any]) -> int:
    """Nodes per replica as first computed; before replicas existed targetNodeCount was it."""
    return int(old.get("perReplicaNodeCount") or old.get("targetNodeCount") or 0)


def replicas_of(ws: Workspace) -> int:
    """spec.replicas for inference; tuning always runs one Job."""
    return ws.replicas if ws.inference is not None else 1


def scaled(ctx: WorkspaceContext, ws: Workspace) -> tuple[WorkspaceContext, int]:
    """The context with target_node_count = nodes per replica x replicas, and the per-replica
    count. Replicas are pods of one StatefulSet, so a replica must fit on one node."""
    per = ctx.target_node_count
    replicas = replicas_of(ws)
    if per > 1 and replicas > 1:
        raise SpecError(
            MULTI_NODE_REPLICAS,
            f"one replica of {ws.name} needs {per} nodes, and replicas above 1 need one node "
            "each: set spec.replicas to 1, or use an InferenceSet (one Workspace per replica)",
        )
    return dataclasses.replace(ctx, target_node_count=per * replicas), per


def selector(ws: Workspace) -> str:
    """The inference pods' label selector as the scale subresource reports it."""
    return f"{LABEL_WORKSPACE}={ws.name}"


def replica_status(
    ws: Workspace, per: int, statefulset: Mapping[str, Any] | None
) -> dict[str, Any]:
    """status.replicas / readyReplicas / selector / perReplicaNodeCount (tuning: only the
    per-replica count, so nothing scales a tuning Workspace)."""
    if ws.inference is None:
        return {"perReplicaNodeCount": per}
    status = (statefulset or {}).get("status") or {}
    pods, ready = int(status.get("replicas") or 0), int(status.get("readyReplicas") or 0)
    return {
        "perReplicaNodeCount": per,
        "replicas": pods // max(per, 1),
        "readyReplicas": ready // max(per, 1),
        "selector": selector(ws),
    }


def _ordinal(pod: Mapping[str, Any], ws_name: str) -> int | None:
    suffix = name_of(pod).removeprefix(f"{ws_name}-")
    return int(suffix) if suffix.isdigit() else None


def claims_to_release(
    ctx: WorkspaceContext, pic: NodePicture, pods: Sequence[JSON]
) -> tuple[ObjectRef, ...]:
    """NodeClaims beyond what the replicas need (after a scale-down), never one whose node
    runs a pod that stays: not-ready claims first, then the newest names."""
    excess = len(pic.live_claims) - pic.needed_claims
    if excess <= 0:
        return ()
    kept_nodes = {
        str((p.get("spec") or {}).get("nodeName") or "")
        for p in pods
        if not deleting(p)
        and (ordinal := _ordinal(p, ctx.name)) is not None
        and ordinal < ctx.target_node_count
    }
    free = [c for c in pic.live_claims if claim_node_name(c) not in kept_nodes - {""}]
    ordered = [c for c in free if not claim_ready(c)] + sorted(
        (c for c in free if claim_ready(c)), key=name_of, reverse=True
    )
    return tuple(
        ObjectRef(NODECLAIM_API_VERSION, "NodeClaim", name_of(claim)) for claim in ordered[:excess]
    )
