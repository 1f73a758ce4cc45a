"""The tuning workload: its config, the dataset preflight gate, the Job and its status."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kaito.contract.files import TRAINING_CONFIG_FILE
from kaito.manifests.context import WorkspaceContext
from kaito.manifests.keys import ANNOTATION_SKIP_PREFLIGHT
from kaito.manifests.preflight import build_preflight_job, preflight_job_name
from kaito.manifests.tuning import (
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
from kaito.reconcile.common import (
    CONFIG_POLL_S,
    WORKLOAD_POLL_S,
    annotations_of,
    changed,
    old_status,
)
from kaito.reconcile.conditions import Cond
from kaito.reconcile.nodes import deleting
from kaito.reconcile.progress import tuning_status
from kaito.reconcile.types import JSON, Event, ObjectRef, Observed, Work


def tuning_config(ctx: WorkspaceContext, observed: Observed) -> tuple[str | None, JSON | None]:
    """(training config text, ConfigMap to create) for the tuning Job."""
    tuning = ctx.workspace.tuning
    assert tuning is not None
    name = tuning.config_map_name
    local = observed.config_map(ctx.namespace, name)
    if local is not None:
        return local.get(TRAINING_CONFIG_FILE), None
    if tuning.config:
        return None, None
    template = observed.config_map(ctx.options.release_namespace, name) or {
        TRAINING_CONFIG_FILE: default_tuning_config(tuning.method)
    }
    return template.get(TRAINING_CONFIG_FILE), build_tuning_config_map(ctx, template)


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    conds = (job.get("status") or {}).get("conditions")
    found = c.find(conds, type_)
    return found if found is not None and found.get("status") == "True" else None


def plan_tuning(
    ctx: WorkspaceContext,
    observed: Observed,
    resource_ready: bool,
    old_progress: Mapping[str, Any] | None,
) -> Work:
    """The Job (replaced when its spec changed), its identity and results claim, and the
    JobStarted / WorkspaceSucceeded conditions with the training progress."""
    tuning = ctx.workspace.tuning
    assert tuning is not None
    text, config_map = tuning_config(ctx, observed)
    if text is None:
        message = (
            f"ConfigMap {tuning.config_map_name!r} not found in namespace {ctx.namespace!r}: "
            f"create it with key {TRAINING_CONFIG_FILE}"
        )
        return Work(
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
    stale = job is not None and changed(desired, job)
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
    work = _job_status(current, pods, apply, delete, events)
    restarts = int(((current or {}).get("status") or {}).get("failed") or 0)
    progress = tuning_status(old_progress, pods, restarts)
    return dataclasses.replace(work, tuning=progress)


def plan_preflight(
    ctx: WorkspaceContext, body: Mapping[str, Any], observed: Observed
) -> tuple[Cond | None, Work | None]:
    """(DatasetValidated condition, work to do instead of provisioning while it is not True).

    Skipped by the `kaito.sh/skip-preflight: "true"` annotation, for jobs on CPU nodes, and for
    workspaces whose nodes or Job already exist (they got past this point before preflight
    existed).
    """
    if annotations_of(body).get(ANNOTATION_SKIP_PREFLIGHT, "").lower() == "true":
        return Cond(
            pf.DATASET_VALIDATED, "True", pf.PREFLIGHT_SKIPPED, "skipped (kaito.sh/skip-preflight)"
        ), None
    if ctx.on_cpu:
        # The preflight exists to keep GPU nodes from being requested for a broken dataset; a
        # CPU job holds nothing costly, and its own input stage reports a bad dataset.
        return Cond(
            pf.DATASET_VALIDATED,
            "True",
            pf.PREFLIGHT_SKIPPED,
            "skipped: the job runs on CPU nodes (no GPU nodes to protect)",
        ), None
    old = c.find(old_status(body).get("conditions"), pf.DATASET_VALIDATED)
    if old is not None and old.get("status") == "True":
        # Passed once: a later spec change does not take the GPUs away again.
        return Cond(
            pf.DATASET_VALIDATED, "True", str(old.get("reason")), str(old.get("message"))
        ), None
    if observed.job is not None or any(not deleting(claim) for claim in observed.nodeclaims):
        return None, None
    text, config_map = tuning_config(ctx, observed)
    apply: list[JSON] = [config_map] if config_map is not None else []
    if text is None:
        return None, plan_tuning(ctx, observed, False, None)
    desired = build_preflight_job(ctx)
    job = observed.preflight_job
    delete: list[ObjectRef] = []
    found: pf.Verdict | None = None
    if job is None:
        apply.append(desired)
    elif changed(desired, job):
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
        return None, Work(
            conds=(
                Cond.of(pf.DATASET_VALIDATED, False, pf.PREFLIGHT_FAILED, found.message),
                Cond.of(c.WORKSPACE_SUCCEEDED, False, pf.PREFLIGHT_FAILED, found.message),
            ),
            state="Failed",
        )
    message = "validating the dataset on a CPU pod before requesting GPU nodes"
    return None, Work(
        apply=tuple(apply),
        delete=tuple(delete),
        conds=(
            Cond(pf.DATASET_VALIDATED, "Unknown", pf.PREFLIGHT_RUNNING, message),
            Cond(c.WORKSPACE_SUCCEEDED, "False", c.PENDING, message),
        ),
        requeue=WORKLOAD_POLL_S,
        state="Pending",
    )


def _job_status(
    job: Mapping[str, Any] | None,
    pods: Sequence[JSON],
    apply: list[JSON],
    delete: list[ObjectRef],
    events: list[Event],
) -> Work:
    status = (job or {}).get("status") or {}
    failed = job is not None and _job_condition(job, "Failed")
    if failed is not None and failed is not False:
        detail = failed.get("message") or failed.get("reason") or ""
        message = f"tuning job failed: {detail}".rstrip(": ")
        return Work(
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
        return Work(
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
    return Work(
        apply=tuple(apply),
        delete=tuple(delete),
        events=tuple(events),
        conds=(job_cond, ws_cond),
        requeue=WORKLOAD_POLL_S,
        state="Running" if started else "Pending",
    )
