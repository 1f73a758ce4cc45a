"""Tuning progress in the Workspace status: parsed from the pod's report, kept after the end."""

from __future__ import annotations

import json
from typing import Any

from kaito.contract.progress import ANNOTATION as ANNOTATION_TUNING_PROGRESS
from kaito.provisioners.kwok import volume_for_claim
from kaito.reconcile.planner import plan
from kaito.reconcile.progress import parse_progress, tuning_status
from kaito.reconcile.types import Observed
from tests.unit.controller.builders import (
    LATER,
    NOW,
    OPTIONS,
    applied,
    converge,
    legacy_tuning,
    one,
    pod,
    with_status,
)
from tests.unit.controller.test_planner import (
    cluster_with_ready_nodes,
    dataclass_replace,
    workload_observed,
)

JSON = dict[str, Any]
NAME = "workspace-tuning-phi-3"


def report(step: int, total: int = 40, **extra: Any) -> str:
    document = {
        "phase": "training",
        "step": step,
        "total_steps": total,
        "epoch": step / total,
        "loss": 2.5 - step / 100,
        "eval_loss": None,
        "tokens_per_second": 812.5,
        "eta_seconds": float(total - step),
        "resumed_from_step": None,
        "message": "",
        "started_at": "2026-11-28T12:00:00Z",
        "updated_at": f"2026-11-28T12:{step:02d}:00Z",
        **extra,
    }
    return json.dumps(document)


def reporting_pod(name: str, text: str) -> JSON:
    out = pod(name, NAME)
    out["metadata"]["annotations"] = {ANNOTATION_TUNING_PROGRESS: text}
    return out


def test_a_progress_document_becomes_the_status_fields_with_a_percent() -> None:
    status = parse_progress(report(10))
    assert status == {
        "phase": "training",
        "step": 10,
        "totalSteps": 40,
        "progressPercent": 25,
        "epoch": 0.25,
        "loss": 2.4,
        "tokensPerSecond": 812.5,
        "etaSeconds": 30.0,
        "startedAt": "2026-11-28T12:00:00Z",
        "updatedAt": "2026-11-28T12:10:00Z",
    }


def test_garbage_and_wrongly_typed_fields_are_dropped_instead_of_breaking_the_status() -> None:
    assert parse_progress("not json") is None
    assert parse_progress("[1, 2]") is None
    status = parse_progress(json.dumps({"step": "ten", "phase": "dancing", "loss": 1.5}))
    assert status == {"loss": 1.5}
    assert parse_progress(json.dumps({"step": -3, "eta_seconds": float("inf")})) is None


def test_a_completed_run_reports_one_hundred_percent() -> None:
    status = parse_progress(report(39, phase="completed"))
    assert status is not None and status["progressPercent"] == 100


def test_the_newest_report_wins_and_failed_pods_count_as_restarts() -> None:
    old_pod = reporting_pod("a", report(12))
    new_pod = reporting_pod("b", report(14, resumed_from_step=10))
    status = tuning_status(None, [new_pod, old_pod], restarts=1)
    assert status is not None
    assert (status["step"], status["resumedFromStep"], status["restarts"]) == (14, 10, 1)


def test_without_pods_the_last_written_metrics_stay() -> None:
    final = parse_progress(report(40, phase="completed"))
    assert tuning_status(final, [], restarts=0) == final


def test_a_running_tuning_workspace_shows_increasing_progress_then_keeps_final_metrics() -> None:
    body, observed, _ = workload_observed(*cluster_with_ready_nodes(legacy_tuning()))
    running = with_status(observed.job, active=1)
    percents = []
    for step in (4, 20, 36):
        seen = dataclass_replace(observed, job=running, pods=(reporting_pod("p", report(step)),))
        result = plan(body, seen, OPTIONS, now=LATER)
        assert result.status is not None
        body = {**body, "status": result.status}
        percents.append(body["status"]["tuning"]["progressPercent"])
    assert percents == [10, 50, 90]

    done = dataclass_replace(
        observed,
        job=with_status(
            observed.job, succeeded=1, conditions=[{"type": "Complete", "status": "True"}]
        ),
        pods=(reporting_pod("p", report(40, phase="completed", loss=0.9)),),
    )
    body, _ = converge(body, done)
    assert body["status"]["state"] == "Succeeded"
    assert body["status"]["tuning"]["loss"] == 0.9
    gone = dataclass_replace(done, pods=())
    body, final = converge(body, gone)
    assert body["status"]["tuning"]["progressPercent"] == 100
    assert final.idle


def test_an_unchanged_report_writes_nothing() -> None:
    body, observed, _ = workload_observed(*cluster_with_ready_nodes(legacy_tuning()))
    seen = dataclass_replace(
        observed, job=with_status(observed.job, active=1), pods=(reporting_pod("p", report(8)),)
    )
    _, final = converge(body, seen)
    assert final.status is None


# --- resume: checkpoints on a PVC that outlives the pod ---------------------------------


def test_the_tuning_job_writes_its_results_to_a_workspace_owned_claim_sized_by_the_preset() -> None:
    body, observed = cluster_with_ready_nodes(legacy_tuning())
    result = plan(body, observed, OPTIONS, now=LATER)
    claim = one(result, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{NAME}-results"
    assert claim["metadata"]["ownerReferences"][0]["kind"] == "Workspace"
    assert claim["spec"]["resources"]["requests"]["storage"] == "80Gi"
    pod_spec = one(result, "Job")["spec"]["template"]["spec"]
    results = next(v for v in pod_spec["volumes"] if v["name"] == "results-volume")
    assert results == {
        "name": "results-volume",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }


def test_no_claim_is_made_before_the_nodes_are_ready() -> None:
    result = plan(legacy_tuning(), Observed(), OPTIONS, now=NOW)
    assert applied(result, "PersistentVolumeClaim") == []


def test_a_replacement_pod_reports_where_it_resumed_and_the_restart_is_counted() -> None:
    body, observed, _ = workload_observed(*cluster_with_ready_nodes(legacy_tuning()))
    replaced = dataclass_replace(
        observed,
        job=with_status(observed.job, active=1, failed=1),
        pods=(reporting_pod("second", report(24, resumed_from_step=20)),),
    )
    status = plan(body, replaced, OPTIONS, now=LATER).status
    assert status is not None
    assert status["tuning"]["resumedFromStep"] == 20
    assert status["tuning"]["restarts"] == 1
    assert applied(plan(body, replaced, OPTIONS, now=LATER), "PersistentVolumeClaim") == []


def test_the_kwok_simulator_binds_a_pending_claim_to_a_volume_of_its_size() -> None:
    claim = {
        "metadata": {"name": f"{NAME}-results", "namespace": "team", "uid": "u-1"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "80Gi"}}},
    }
    volume = volume_for_claim(claim)
    assert volume["spec"]["capacity"] == {"storage": "80Gi"}
    assert volume["spec"]["claimRef"]["uid"] == "u-1"
    assert volume["spec"]["storageClassName"] == ""


def test_the_trainer_runs_as_kaito_tuning_bound_to_the_charts_tuning_role() -> None:
    body, observed = cluster_with_ready_nodes(legacy_tuning())
    result = plan(body, observed, OPTIONS, now=LATER)
    assert "Role" not in [o["kind"] for o in result.apply]  # no role of the operator's making
    binding = one(result, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": OPTIONS.tuning_cluster_role,
    }
    assert binding["subjects"][0]["name"] == one(result, "ServiceAccount")["metadata"]["name"]
    pod_spec = one(result, "Job")["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "kaito-tuning"
    trainer = next(c for c in pod_spec["initContainers"] if c["name"] == NAME)
    env = {e["name"]: e.get("valueFrom") for e in trainer["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    kinds = [o["kind"] for o in result.apply]
    assert kinds.index("RoleBinding") < kinds.index("Job")


def test_the_pushed_adapter_digest_is_copied_from_the_pushers_message_and_stays() -> None:
    body, observed, _ = workload_observed(*cluster_with_ready_nodes(legacy_tuning()))
    pusher_pod = pod("p", NAME)
    pushed = {
        "ok": True,
        "pushed": {"reference": "myacr.azurecr.io/adapter:0.0.1", "digest": "sha256:" + "ab" * 32},
    }
    pusher_pod["status"]["containerStatuses"] = [
        {"name": "pusher", "state": {"terminated": {"exitCode": 0, "message": json.dumps(pushed)}}}
    ]
    done = dataclass_replace(
        observed,
        job=with_status(
            observed.job, succeeded=1, conditions=[{"type": "Complete", "status": "True"}]
        ),
        pods=(pusher_pod,),
    )
    body, _ = converge(body, done)
    assert body["status"]["tuning"]["adapterDigest"] == "sha256:" + "ab" * 32
    assert body["status"]["tuning"]["adapterImage"] == "myacr.azurecr.io/adapter:0.0.1"
    body, final = converge(body, dataclass_replace(done, pods=()))
    assert body["status"]["tuning"]["adapterDigest"].startswith("sha256:ab")
    assert final.idle
