"""The inference workload: its StatefulSet, Services and config, and whether it serves."""

from __future__ import annotations

from kaito.manifests.context import WorkspaceContext
from kaito.manifests.inference import build_inference_objects, build_statefulset
from kaito.reconcile import conditions as c
from kaito.reconcile.common import WORKLOAD_POLL_S, changed, next_state
from kaito.reconcile.conditions import Cond
from kaito.reconcile.nodes import deleting, name_of
from kaito.reconcile.types import JSON, Event, Observed, Work


def plan_inference(
    ctx: WorkspaceContext, observed: Observed, resource_ready: bool, old_state: str | None
) -> Work:
    """Objects to apply once nodes are ready (or the workload already exists), and the
    InferenceReady / WorkspaceSucceeded conditions."""
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
            elif not changed(
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
                        subject=("StatefulSet", name_of(desired)),
                    )
                )
    desired_sts = build_statefulset(ctx)
    current_sts = sts is not None and not changed(desired_sts, sts)
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
    return Work(
        apply=tuple(apply),
        conds=(inference, succeeded),
        events=tuple(events),
        requeue=None if ready else WORKLOAD_POLL_S,
        state=next_state(old_state, ready),
    )
