"""plan(workspace, observed) -> what to apply, delete and report: the whole controller logic.

Pure: no I/O and no clock (the caller passes `now`), so every decision is unit-testable on
plain data, and running it twice on the same observation gives the same plan (idempotent).
This module orchestrates one pass; the parts live in revisions, capacity, inference and
tuning, and the vocabulary (Plan, ObjectRef, Event, Observed) in types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kaito.api.validation import max_model_len
from kaito.api.workspace import Workspace, parse_workspace
from kaito.manifests.context import resolve, spec_hash
from kaito.manifests.errors import SpecError
from kaito.manifests.nodeclaim import NODECLAIM_API_VERSION, build_nodeclaim
from kaito.manifests.options import ClusterOptions
from kaito.reconcile import conditions as c
from kaito.reconcile.capacity import claim_events, node_conditions
from kaito.reconcile.common import CLAIMS_POLL_S, NODES_POLL_S, finish_status, old_status
from kaito.reconcile.conditions import Cond
from kaito.reconcile.guard import claim_timeout, refuse_invalid, with_timeout
from kaito.reconcile.inference import plan_inference
from kaito.reconcile.nodes import deleting, name_of, picture
from kaito.reconcile.revisions import plan_revision
from kaito.reconcile.scale import claims_to_release, frozen_per_replica, replica_status, scaled
from kaito.reconcile.tuning import plan_preflight, plan_tuning
from kaito.reconcile.types import JSON, Event, ObjectRef, Observed, Plan

# What the controller parsed from the stored body: the model, or why it is not one.
Parsed = Workspace | SpecError


def parse(body: Mapping[str, Any]) -> Parsed:
    """The Workspace model of a stored body, or the SpecError that reports why it is not one.

    The controller calls this once per pass and hands the result to both observe and plan.
    """
    try:
        return parse_workspace(dict(body))
    except ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "workspace"
        message = errors[0]["msg"] if errors else "invalid"
        return SpecError("InvalidWorkspaceSpec", f"{where or 'workspace'}: {message}; fix the spec")


def plan(
    body: Mapping[str, Any],
    observed: Observed,
    options: ClusterOptions,
    *,
    now: str,
    workspace: Parsed | None = None,
) -> Plan:
    """Everything to do for one Workspace body (as stored) given the observed cluster.

    `workspace` is `parse(body)` when the caller already has it (the controller does);
    None parses here.
    """
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return plan_deletion(body, observed, now=now)
    parsed = parse(body) if workspace is None else workspace
    try:
        if isinstance(parsed, SpecError):
            raise parsed
        return _plan(body, parsed, observed, options, now=now)
    except SpecError as error:
        return _spec_error_plan(body, error, now=now)


def plan_deletion(body: Mapping[str, Any], observed: Observed, *, now: str) -> Plan:
    """Delete the workspace's NodeClaims; everything else goes with ownerReferences."""
    deletes = tuple(
        ObjectRef(NODECLAIM_API_VERSION, "NodeClaim", name_of(claim))
        for claim in observed.nodeclaims
        if not deleting(claim)
    )
    status = finish_status(
        body,
        [Cond(c.WORKSPACE_DELETING, "True", c.DELETED, "workspace is being deleted")],
        now=now,
    )
    if status is not None:
        # On deletion, only this condition (upstream §5).
        status["conditions"] = [
            cond for cond in status["conditions"] if cond["type"] == c.WORKSPACE_DELETING
        ]
    return Plan(delete=deletes, status=status)


def _spec_error_plan(body: Mapping[str, Any], error: SpecError, *, now: str) -> Plan:
    status = finish_status(
        body,
        [Cond.of(c.WORKSPACE_SUCCEEDED, False, error.reason, error.message)],
        now=now,
        state="Failed",
    )
    return Plan(status=status, error=error)


def _plan(
    body: Mapping[str, Any],
    ws: Workspace,
    observed: Observed,
    options: ClusterOptions,
    *,
    now: str,
) -> Plan:
    rev = plan_revision(body, ws, spec_hash(ws), observed.revisions)
    old = old_status(body)
    frozen_per = frozen_per_replica(old)
    user_config = (
        observed.config_map(ws.namespace, ws.inference.config)
        if ws.inference is not None and ws.inference.config
        else None
    )
    ctx = resolve(
        ws,
        options,
        target_nodes=frozen_per or None,
        max_model_len=max_model_len(user_config),
        revision=rev.number,
    )
    ctx, per_replica = scaled(ctx, ws)
    refuse_invalid(ws, options)  # what only the webhook checks, checked again before acting
    preflight_cond: Cond | None = None
    if ws.tuning is not None:
        preflight_cond, gate = plan_preflight(ctx, body, observed)
        if gate is not None:
            # No NodeClaim, no Job: GPUs are asked for only once the data is known good.
            return Plan(
                apply=(*rev.apply, *gate.apply),
                delete=(*rev.delete, *gate.delete),
                status=finish_status(body, [*gate.conds], now=now, state=gate.state),
                annotations=rev.annotations,
                requeue_after=gate.requeue,
            )
    use_claims = options.uses_nodeclaims
    pic = picture(ctx, observed.nodes, observed.nodeclaims, use_claims=use_claims)
    if not use_claims and pic.gpus_per_node:
        ctx = dataclasses.replace(ctx, gpus_per_node=pic.gpus_per_node)
    timeout = claim_timeout(body, pic, options, now=now) if use_claims else None
    new_claims = [] if timeout else [build_nodeclaim(ctx, index) for index in pic.to_create]
    released = claims_to_release(ctx, pic, observed.pods) if use_claims else ()
    apply: list[JSON] = [*rev.apply, *new_claims]
    conds = node_conditions(ctx, pic, use_claims)
    if timeout is not None:
        conds = with_timeout(conds, timeout)
    if preflight_cond is not None:
        conds.append(preflight_cond)
    events: list[Event] = claim_events(new_claims, body, conds) if use_claims else []
    resource_ready = all(x.status == "True" for x in conds if x.type == c.RESOURCE_READY)
    if use_claims and not pic.claims_ready:
        requeue: float | None = CLAIMS_POLL_S
    elif not resource_ready:
        requeue = NODES_POLL_S
    else:
        requeue = None
    if ws.tuning is not None:
        work = plan_tuning(ctx, observed, resource_ready, old.get("tuning"))
    else:
        work = plan_inference(ctx, observed, resource_ready, old.get("state"))
    apply += work.apply
    events += work.events
    conds += work.conds
    if work.requeue is not None:
        requeue = min(requeue, work.requeue) if requeue is not None else work.requeue
    if timeout is not None:
        requeue = None  # no polling: a claim's own change (or a new spec) wakes it
    status = finish_status(
        body,
        conds,
        now=now,
        remove=() if use_claims else (c.NODECLAIM_READY,),
        workerNodes=list(pic.ready_nodes),
        targetNodeCount=ctx.target_node_count,
        **replica_status(ws, per_replica, observed.statefulset),
        state=work.state,
        **({"tuning": work.tuning} if ws.tuning is not None else {}),
    )
    return Plan(
        apply=tuple(apply),
        delete=(*rev.delete, *released, *work.delete),
        status=status,
        annotations=rev.annotations,
        events=tuple(events),
        requeue_after=requeue,
    )
