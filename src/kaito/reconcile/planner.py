"""plan(workspace, observed) -> what to apply, delete and report: the whole controller logic.

Pure: no I/O and no clock (the caller passes `now`), so every decision is unit-testable on
plain data, and running it twice on the same observation gives the same plan (idempotent).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kaito.api.validation import max_model_len
from kaito.api.workspace import Workspace, parse_workspace
from kaito.manifests.common import applied_hash
from kaito.manifests.context import WorkspaceContext, resolve, spec_hash
from kaito.manifests.errors import SpecError
from kaito.manifests.inference import build_inference_objects, build_statefulset
from kaito.manifests.keys import (
    ANNOTATION_HASH,
    ANNOTATION_REVISION,
    ANNOTATION_SKIP_PREFLIGHT,
)
from kaito.manifests.nodeclaim import NODECLAIM_API_VERSION, build_nodeclaim
from kaito.manifests.options import ClusterOptions
from kaito.manifests.preflight import build_preflight_job, preflight_job_name
from kaito.manifests.revision import MAX_REVISIONS, build_controller_revision
from kaito.manifests.tuning import (
    TRAINING_CONFIG_KEY,
    build_job,
    build_results_claim,
    build_tuning_config_map,
    build_tuning_identity,
    training_output_dir,
    uses_results_claim,
)
from kaito.presets.validation import default_tuning_config
from kaito.reconcile import conditions as c
from kaito.reconcile import preflight as pf
from kaito.reconcile.conditions import Cond
from kaito.reconcile.nodes import NodePicture, deleting, name_of, picture
from kaito.reconcile.observed import Observed
from kaito.reconcile.progress import tuning_status

JSON = dict[str, Any]

# Requeue delays (seconds). Child events wake the controller earlier; these are the floor
# for what is not watched (Nodes) and a safety net for missed events.
NODES_POLL_S = 2.0
CLAIMS_POLL_S = 10.0
WORKLOAD_POLL_S = 10.0
CONFIG_POLL_S = 15.0


@dataclass(frozen=True)
class ObjectRef:
    """An object to delete; `propagation` is the deletion propagation policy."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None
    propagation: str = "Background"


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the Workspace."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """The planner's answer. `status` is None when nothing in the status changed."""

    apply: tuple[JSON, ...] = ()
    delete: tuple[ObjectRef, ...] = ()
    status: JSON | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    error: SpecError | None = None

    @property
    def idle(self) -> bool:
        """Nothing to write: the cluster already matches the workspace."""
        return not (self.apply or self.delete or self.status or self.annotations or self.events)


def _old_status(body: Mapping[str, Any]) -> JSON:
    return dict(body.get("status") or {})


def _generation(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)


def _annotations(body: Mapping[str, Any]) -> Mapping[str, str]:
    return (body.get("metadata") or {}).get("annotations") or {}


def _revision_number(obj: Mapping[str, Any]) -> int:
    value = obj.get("revision")
    return int(value) if isinstance(value, int) else 0


@dataclass(frozen=True)
class _Revision:
    number: str
    annotations: dict[str, str]
    apply: tuple[JSON, ...]
    delete: tuple[ObjectRef, ...]


def _revision(
    body: Mapping[str, Any], ws: Workspace, digest: str, observed: Sequence[JSON]
) -> _Revision:
    """The spec's revision number (a known spec keeps its number), the ControllerRevision to
    create for a new spec, the oldest ones beyond MAX_REVISIONS to delete, and the workspace
    annotations to write when they changed (upstream §7 step 4)."""
    annotations = _annotations(body)
    current = annotations.get(ANNOTATION_REVISION, "")
    live = [r for r in observed if not deleting(r)]
    match = next(
        (
            r
            for r in live
            if ((r.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_HASH) == digest
        ),
        None,
    )
    apply: list[JSON] = []
    if match is not None:
        number = _revision_number(match)
    elif live:
        number = max(_revision_number(r) for r in live) + 1
    elif annotations.get(ANNOTATION_HASH) == digest and current.isdigit():
        number = int(current)
    else:
        number = int(current) + 1 if current.isdigit() else 1
    if match is None:
        apply.append(build_controller_revision(ws, digest, number))
    kept = sorted(live, key=_revision_number)
    excess = len(kept) + len(apply) - MAX_REVISIONS
    delete = tuple(
        ObjectRef("apps/v1", "ControllerRevision", name_of(r), ws.namespace)
        for r in [r for r in kept if r is not match][: max(0, excess)]
    )
    wanted = {ANNOTATION_HASH: digest, ANNOTATION_REVISION: str(number)}
    changed = {k: v for k, v in wanted.items() if annotations.get(k) != v}
    return _Revision(str(number), wanted if changed else {}, tuple(apply), delete)


def _finish_status(
    body: Mapping[str, Any],
    conds: Sequence[Cond],
    *,
    now: str,
    remove: Sequence[str] = (),
    **fields: Any,
) -> JSON | None:
    """The new status, or None when it equals the current one."""
    old = _old_status(body)
    new = dict(old)
    new["conditions"] = c.merge_conditions(
        old.get("conditions"), conds, generation=_generation(body), now=now, remove=remove
    )
    for key, value in fields.items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    return None if new == old else new


def _next_state(old_state: str | None, ready: bool) -> str:
    if ready:
        return "Ready"
    return "NotReady" if old_state in ("Ready", "NotReady") else "Pending"


def plan_deletion(body: Mapping[str, Any], observed: Observed, *, now: str) -> Plan:
    """Delete the workspace's NodeClaims; everything else goes with ownerReferences."""
    deletes = tuple(
        ObjectRef(NODECLAIM_API_VERSION, "NodeClaim", name_of(claim))
        for claim in observed.nodeclaims
        if not deleting(claim)
    )
    status = _finish_status(
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
    status = _finish_status(
        body,
        [Cond.of(c.WORKSPACE_SUCCEEDED, False, error.reason, error.message)],
        now=now,
        state="Failed",
    )
    return Plan(status=status, error=error)


def _parse(body: Mapping[str, Any]) -> Workspace:
    try:
        return parse_workspace(dict(body))
    except ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "workspace"
        message = errors[0]["msg"] if errors else "invalid"
        raise SpecError(
            "InvalidWorkspaceSpec", f"{where or 'workspace'}: {message}; fix the spec"
        ) from exc


def _node_conditions(ctx: WorkspaceContext, pic: NodePicture, use_claims: bool) -> list[Cond]:
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


def _claim_events(
    created: Sequence[JSON], body: Mapping[str, Any], conds: Sequence[Cond]
) -> list[Event]:
    ws_name = f"{(body.get('metadata') or {}).get('namespace')}/{name_of(body)}"
    events = [
        Event("Normal", "NodeClaimCreated", f"Creating NodeClaim {name} for workspace {ws_name}")
        for name in (name_of(claim) for claim in created)
    ]
    new = next((x for x in conds if x.type == c.NODECLAIM_READY), None)
    old = c.find(_old_status(body).get("conditions"), c.NODECLAIM_READY)
    if (
        new is not None
        and new.status == "False"
        and new.reason not in (c.NODECLAIM_NOT_READY, *c.WAITING_NODECLAIM_REASONS)
        and (old is None or old.get("reason") != new.reason)
    ):
        events.append(Event("Warning", "NodeClaimFailed", new.message))
    return events


def _changed(desired: JSON, observed: Mapping[str, Any] | None) -> bool:
    return observed is None or applied_hash(observed) != applied_hash(desired)


def plan(
    body: Mapping[str, Any],
    observed: Observed,
    options: ClusterOptions,
    *,
    now: str,
) -> Plan:
    """Everything to do for one Workspace body (as stored) given the observed cluster."""
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return plan_deletion(body, observed, now=now)
    try:
        return _plan(body, observed, options, now=now)
    except SpecError as error:
        return _spec_error_plan(body, error, now=now)


def _plan(
    body: Mapping[str, Any], observed: Observed, options: ClusterOptions, *, now: str
) -> Plan:
    ws = _parse(body)
    rev = _revision(body, ws, spec_hash(ws), observed.revisions)
    revision, annotations = rev.number, rev.annotations
    old = _old_status(body)
    frozen_target = int(old.get("targetNodeCount") or 0)
    user_config = (
        observed.config_map(ws.namespace, ws.inference.config)
        if ws.inference is not None and ws.inference.config
        else None
    )
    ctx = resolve(
        ws,
        options,
        target_nodes=frozen_target or None,
        max_model_len=max_model_len(user_config),
        revision=revision,
    )
    preflight_cond: Cond | None = None
    if ws.tuning is not None:
        preflight_cond, gate = _plan_preflight(ctx, body, observed)
        if gate is not None:
            # No NodeClaim, no Job: GPUs are asked for only once the data is known good.
            status = _finish_status(body, [*gate.conds], now=now, state=gate.state)
            return Plan(
                apply=(*rev.apply, *gate.apply),
                delete=(*rev.delete, *gate.delete),
                status=status,
                annotations=annotations,
                requeue_after=gate.requeue,
            )
    use_claims = options.uses_nodeclaims
    pic = picture(ctx, observed.nodes, observed.nodeclaims, use_claims=use_claims)
    if not use_claims and pic.gpus_per_node:
        ctx = dataclasses.replace(ctx, gpus_per_node=pic.gpus_per_node)
    new_claims = [build_nodeclaim(ctx, index) for index in pic.to_create]
    apply: list[JSON] = [*rev.apply, *new_claims]
    conds = _node_conditions(ctx, pic, use_claims)
    if preflight_cond is not None:
        conds.append(preflight_cond)
    events = _claim_events(new_claims, body, conds) if use_claims else []
    resource_ready = all(x.status == "True" for x in conds if x.type == c.RESOURCE_READY)
    if use_claims and not pic.claims_ready:
        requeue: float | None = CLAIMS_POLL_S
    elif not resource_ready:
        requeue = NODES_POLL_S
    else:
        requeue = None
    if ws.tuning is not None:
        work = _plan_tuning(ctx, observed, resource_ready, old.get("tuning"))
    else:
        work = _plan_inference(ctx, observed, resource_ready, old.get("state"))
    apply += work.apply
    events += work.events
    conds += work.conds
    if work.requeue is not None:
        requeue = min(requeue, work.requeue) if requeue is not None else work.requeue
    status = _finish_status(
        body,
        conds,
        now=now,
        remove=() if use_claims else (c.NODECLAIM_READY,),
        workerNodes=list(pic.ready_nodes),
        targetNodeCount=ctx.target_node_count,
        state=work.state,
        **({"tuning": work.tuning} if ws.tuning is not None else {}),
    )
    return Plan(
        apply=tuple(apply),
        delete=(*rev.delete, *work.delete),
        status=status,
        annotations=annotations,
        events=tuple(events),
        requeue_after=requeue,
    )


@dataclass(frozen=True)
class _Work:
    apply: tuple[JSON, ...] = ()
    delete: tuple[ObjectRef, ...] = ()
    conds: tuple[Cond, ...] = ()
    events: tuple[Event, ...] = ()
    requeue: float | None = None
    state: str | None = None
    tuning: JSON | None = None


def _plan_inference(
    ctx: WorkspaceContext, observed: Observed, resource_ready: bool, old_state: str | None
) -> _Work:
    sts = observed.statefulset
    apply: list[JSON] = []
    events: list[Event] = []
    if resource_ready or sts is not None:
        services = {name_of(s): s for s in observed.services}
        for desired in build_inference_objects(ctx):
            if desired["kind"] == "ConfigMap":
                data = observed.config_map(ctx.namespace, name_of(desired))
                if data == desired["data"]:
                    continue
            elif not _changed(
                desired, sts if desired["kind"] == "StatefulSet" else services.get(name_of(desired))
            ):
                continue
            apply.append(desired)
            if desired["kind"] == "StatefulSet" and sts is not None:
                events.append(
                    Event(
                        "Normal",
                        "WorkloadRollout",
                        f"Rolling StatefulSet {ctx.name} to revision {ctx.revision}",
                    )
                )
    desired_sts = build_statefulset(ctx)
    current_sts = sts is not None and not _changed(desired_sts, sts)
    status = (sts or {}).get("status") or {}
    meta = (sts or {}).get("metadata") or {}
    sts_ready = (
        current_sts
        and int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("readyReplicas") or 0) >= ctx.target_node_count
        and int(status.get("updatedReplicas") or 0) >= ctx.target_node_count
    )
    pods = [p for p in observed.pods if not deleting(p)]
    pods_ready = sum(1 for p in pods if c.pod_ready(p)) >= ctx.target_node_count
    problem = c.pods_problem(pods)
    ready = bool(resource_ready and sts_ready and pods_ready and problem is None)
    if ready:
        inference = Cond(
            c.INFERENCE_READY,
            "True",
            c.INFERENCE_SUCCESS,
            "Inference has been deployed successfully",
        )
        succeeded = Cond(c.WORKSPACE_SUCCEEDED, "True", c.SUCCEEDED, "workspace succeeds")
    elif problem is not None:
        inference = Cond.of(c.INFERENCE_READY, False, problem.reason, problem.message)
        succeeded = Cond.of(c.WORKSPACE_SUCCEEDED, False, problem.reason, problem.message)
    else:
        inference = Cond(
            c.INFERENCE_READY, "False", c.INFERENCE_PENDING, "Inference workload is not ready"
        )
        succeeded = Cond(
            c.WORKSPACE_SUCCEEDED,
            "False",
            c.PENDING,
            "workspace is waiting for inference workload readiness",
        )
    return _Work(
        apply=tuple(apply),
        conds=(inference, succeeded),
        events=tuple(events),
        requeue=None if ready else WORKLOAD_POLL_S,
        state=_next_state(old_state, ready),
    )


def _tuning_config(ctx: WorkspaceContext, observed: Observed) -> tuple[str | None, JSON | None]:
    """(training config text, ConfigMap to create) for the tuning Job."""
    tuning = ctx.workspace.tuning
    assert tuning is not None
    name = tuning.config_map_name
    local = observed.config_map(ctx.namespace, name)
    if local is not None:
        return local.get(TRAINING_CONFIG_KEY), None
    if tuning.config:
        return None, None
    template = observed.config_map(ctx.options.release_namespace, name) or {
        TRAINING_CONFIG_KEY: default_tuning_config(tuning.method)
    }
    return template.get(TRAINING_CONFIG_KEY), build_tuning_config_map(ctx, template)


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    conds = (job.get("status") or {}).get("conditions")
    found = c.find(conds, type_)
    return found if found is not None and found.get("status") == "True" else None


def _plan_tuning(
    ctx: WorkspaceContext,
    observed: Observed,
    resource_ready: bool,
    old_progress: Mapping[str, Any] | None,
) -> _Work:
    tuning = ctx.workspace.tuning
    assert tuning is not None
    text, config_map = _tuning_config(ctx, observed)
    if text is None:
        message = (
            f"ConfigMap {tuning.config_map_name!r} not found in namespace {ctx.namespace!r}: "
            f"create it with key {TRAINING_CONFIG_KEY}"
        )
        return _Work(
            conds=(
                Cond.of(c.JOB_STARTED, False, "ConfigMapNotFound", message),
                Cond.of(c.WORKSPACE_SUCCEEDED, False, "ConfigMapNotFound", message),
            ),
            requeue=CONFIG_POLL_S,
            state="Pending",
        )
    apply: list[JSON] = [config_map] if config_map is not None else []
    desired = build_job(ctx, output_dir=training_output_dir(text))
    job = observed.job
    delete: list[ObjectRef] = []
    events: list[Event] = []
    if (
        uses_results_claim(ctx)
        and observed.results_claim is None
        and (resource_ready or job is not None)
    ):
        # Created with the Job (not before: no storage for a workspace that never trains);
        # only when missing, as a bound claim's spec is immutable.
        apply.append(build_results_claim(ctx))
    stale = job is not None and _changed(desired, job)
    if job is None and resource_ready:
        # Its identity first (applied with each new Job: idempotent, and not worth observing).
        apply += [*build_tuning_identity(ctx), desired]
    elif stale and job is not None and not deleting(job):
        # A Job's pod template is immutable: replace it (upstream §11, Foreground).
        delete.append(
            ObjectRef("batch/v1", "Job", ctx.name, ctx.namespace, propagation="Foreground")
        )
        events.append(
            Event(
                "Normal", "WorkloadRollout", f"Replacing Job {ctx.name} for revision {ctx.revision}"
            )
        )
    current = job if job is not None and not stale else None
    pods = [p for p in observed.pods if not pf.is_preflight_pod(p)]
    work = _tuning_status(current, pods, apply, delete, events)
    restarts = int(((current or {}).get("status") or {}).get("failed") or 0)
    progress = tuning_status(old_progress, pods, restarts)
    return dataclasses.replace(work, tuning=progress)


def _plan_preflight(
    ctx: WorkspaceContext, body: Mapping[str, Any], observed: Observed
) -> tuple[Cond | None, _Work | None]:
    """(DatasetValidated condition, work to do instead of provisioning while it is not True).

    Skipped by the `kaito.sh/skip-preflight: "true"` annotation, and for workspaces whose
    nodes or Job already exist (they got past this point before preflight existed).
    """
    if _annotations(body).get(ANNOTATION_SKIP_PREFLIGHT, "").lower() == "true":
        return Cond(
            pf.DATASET_VALIDATED, "True", pf.PREFLIGHT_SKIPPED, "skipped (kaito.sh/skip-preflight)"
        ), None
    old = c.find(_old_status(body).get("conditions"), pf.DATASET_VALIDATED)
    if old is not None and old.get("status") == "True":
        # Passed once: a later spec change does not take the GPUs away again.
        return Cond(
            pf.DATASET_VALIDATED, "True", str(old.get("reason")), str(old.get("message"))
        ), None
    if observed.job is not None or any(not deleting(claim) for claim in observed.nodeclaims):
        return None, None
    text, config_map = _tuning_config(ctx, observed)
    apply: list[JSON] = [config_map] if config_map is not None else []
    if text is None:
        return None, _plan_tuning(ctx, observed, False, None)
    desired = build_preflight_job(ctx)
    job = observed.preflight_job
    delete: list[ObjectRef] = []
    found: pf.Verdict | None = None
    if job is None:
        apply.append(desired)
    elif _changed(desired, job):
        # The input changed: check the new one (a Job's template is immutable).
        if not deleting(job):
            delete.append(
                ObjectRef(
                    "batch/v1",
                    "Job",
                    preflight_job_name(ctx.name),
                    ctx.namespace,
                    propagation="Foreground",
                )
            )
    else:
        found = pf.job_verdict(job, observed.pods)
    if found is not None and found.ok:
        return Cond.of(pf.DATASET_VALIDATED, True, pf.PREFLIGHT_PASSED, found.message), None
    if found is not None:
        return None, _Work(
            conds=(
                Cond.of(pf.DATASET_VALIDATED, False, pf.PREFLIGHT_FAILED, found.message),
                Cond.of(c.WORKSPACE_SUCCEEDED, False, pf.PREFLIGHT_FAILED, found.message),
            ),
            state="Failed",
        )
    message = "validating the dataset on a CPU pod before requesting GPU nodes"
    return None, _Work(
        apply=tuple(apply),
        delete=tuple(delete),
        conds=(
            Cond(pf.DATASET_VALIDATED, "Unknown", pf.PREFLIGHT_RUNNING, message),
            Cond(c.WORKSPACE_SUCCEEDED, "False", c.PENDING, message),
        ),
        requeue=WORKLOAD_POLL_S,
        state="Pending",
    )


def _tuning_status(
    job: Mapping[str, Any] | None,
    pods: Sequence[JSON],
    apply: list[JSON],
    delete: list[ObjectRef],
    events: list[Event],
) -> _Work:
    status = (job or {}).get("status") or {}
    failed = job is not None and _job_condition(job, "Failed")
    if failed is not None and failed is not False:
        detail = failed.get("message") or failed.get("reason") or ""
        message = f"tuning job failed: {detail}".rstrip(": ")
        return _Work(
            apply=tuple(apply),
            delete=tuple(delete),
            events=tuple(events),
            conds=(
                Cond.of(c.JOB_STARTED, False, c.JOB_FAILED, message),
                Cond.of(c.WORKSPACE_SUCCEEDED, False, c.FAILED, message),
            ),
            state="Failed",
        )
    if job is not None and (
        int(status.get("succeeded") or 0) > 0 or _job_condition(job, "Complete") is not None
    ):
        return _Work(
            apply=tuple(apply),
            delete=tuple(delete),
            events=tuple(events),
            conds=(
                Cond(c.JOB_STARTED, "True", c.JOB_STARTED_REASON, "Tuning job has started"),
                Cond(c.WORKSPACE_SUCCEEDED, "True", c.SUCCEEDED, "workspace succeeds"),
            ),
            state="Succeeded",
        )
    started = job is not None and (
        int(status.get("active") or 0) > 0 or int(status.get("ready") or 0) > 0
    )
    problem = c.pods_problem([p for p in pods if not deleting(p)]) if job is not None else None
    if started:
        job_cond = Cond(c.JOB_STARTED, "True", c.JOB_STARTED_REASON, "Tuning job has started")
        ws_cond = Cond(
            c.WORKSPACE_SUCCEEDED,
            "False",
            c.PENDING,
            "workspace has not completed yet, tuning job is running",
        )
    else:
        job_cond = Cond(c.JOB_STARTED, "False", c.JOB_PENDING, "Tuning job has not started")
        ws_cond = Cond(
            c.WORKSPACE_SUCCEEDED,
            "False",
            c.PENDING,
            "workspace is initializing, tuning job has not started",
        )
    if problem is not None:
        ws_cond = Cond.of(c.WORKSPACE_SUCCEEDED, False, problem.reason, problem.message)
    return _Work(
        apply=tuple(apply),
        delete=tuple(delete),
        events=tuple(events),
        conds=(job_cond, ws_cond),
        requeue=WORKLOAD_POLL_S,
        state="Running" if started else "Pending",
    )
