"""Node capacity as status: NodeClaimReady, NodesReady, ResourceReady and the claim Events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kaito.manifests.context import WorkspaceContext
from kaito.reconcile import conditions as c
from kaito.reconcile.common import old_status
from kaito.reconcile.conditions import Cond
from kaito.reconcile.nodes import NodePicture, name_of
from kaito.reconcile.types import JSON, Event


def node_conditions(ctx: WorkspaceContext, pic: NodePicture, use_claims: bool) -> list[Cond]:
    target = ctx.target_node_count
    nodes_ok = len(pic.ready_nodes) >= target
    out: list[Cond] = []
    claim_cond: Cond | None = None
    if use_claims:
        if pic.claims_ready:
            claim_cond = Cond(
                c.NODECLAIM_READY, "True", c.NODECLAIMS_READY, "Enough NodeClaims are ready"
            )
        else:
            problem = c.nodeclaim_problem(pic.live_claims)
            reason, message = problem or (
                c.NODECLAIM_NOT_READY,
                f"Ready NodeClaims are not enough ({len(pic.ready_claims)}/{pic.needed_claims})",
            )
            claim_cond = Cond.of(c.NODECLAIM_READY, False, reason, message)
        out.append(claim_cond)
    node_cond = (
        Cond(c.NODES_READY, "True", c.NODES_READY_REASON, "Enough Nodes are ready")
        if nodes_ok
        else Cond.of(
            c.NODES_READY,
            False,
            c.NODE_NOT_READY,
            f"Not enough Nodes are ready ({len(pic.ready_nodes)}/{target})",
        )
    )
    if pic.pressure:
        # Upstream appends this to NodesReady whatever its status.
        warning = f"; warning: worker node(s) under resource pressure: {', '.join(pic.pressure)}"
        node_cond = Cond.of(
            node_cond.type,
            node_cond.status == "True",
            node_cond.reason,
            node_cond.message + warning,
        )
    out.append(node_cond)
    if claim_cond is not None and claim_cond.status != "True":
        out.append(Cond(c.RESOURCE_READY, "False", claim_cond.reason, claim_cond.message))
    elif node_cond.status != "True":
        out.append(Cond(c.RESOURCE_READY, "False", node_cond.reason, node_cond.message))
    else:
        out.append(
            Cond(c.RESOURCE_READY, "True", c.RESOURCE_SUCCESS, "workspace resource is ready")
        )
    return out


def claim_events(
    created: Sequence[JSON], body: Mapping[str, Any], conds: Sequence[Cond]
) -> list[Event]:
    """One creation Event per new NodeClaim (attached to it), and a warning when the claims
    newly failed for a reason other than waiting."""
    ws_name = f"{(body.get('metadata') or {}).get('namespace')}/{name_of(body)}"
    events = [
        Event(
            "Normal",
            "NodeClaimCreated",
            f"Creating NodeClaim {name} for workspace {ws_name}",
            subject=("NodeClaim", name),
        )
        for name in (name_of(claim) for claim in created)
    ]
    new = next((x for x in conds if x.type == c.NODECLAIM_READY), None)
    old = c.find(old_status(body).get("conditions"), c.NODECLAIM_READY)
    if (
        new is not None
        and new.status == "False"
        and new.reason not in (c.NODECLAIM_NOT_READY, *c.WAITING_NODECLAIM_REASONS)
        and (old is None or old.get("reason") != new.reason)
    ):
        events.append(Event("Warning", "NodeClaimFailed", new.message))
    return events
