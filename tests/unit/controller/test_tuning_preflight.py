"""The dataset preflight: a CPU Job checks the data before any GPU node is asked for."""

from __future__ import annotations

import copy
import json
from typing import Any

from kaito.manifests.keys import ANNOTATION_SKIP_PREFLIGHT, GPU_RESOURCE
from kaito.reconcile.planner import plan
from kaito.reconcile.types import Observed, Plan
from tests.unit.controller.builders import (
    LATER,
    NOW,
    OPTIONS,
    adding,
    after,
    applied,
    condition,
    legacy_tuning_workspace,
    stored,
    with_,
)

JSON = dict[str, Any]
NAME = "workspace-tuning-phi-3"
BAD_ROW = {
    "ok": False,
    "errors": [
        {
            "file": "/mnt/data/train-00000.parquet",
            "row": 17,
            "column": "messages",
            "message": "expected a list of {role, content} messages",
        }
    ],
}
GOOD = {
    "ok": True,
    "train_rows": 14250,
    "eval_rows": 750,
    "file_count": 1,
    "tokens": {"mean": 212.4, "p95": 611, "max": 2049, "truncated_rows": 3, "max_length": 1024},
}


def fresh() -> JSON:
    return stored(legacy_tuning_workspace(), preflight_passed=False)


def preflight_job_of(result: Plan) -> JSON:
    jobs = [j for j in applied(result, "Job") if j["metadata"]["name"].endswith("-preflight")]
    assert len(jobs) == 1, [j["metadata"]["name"] for j in applied(result, "Job")]
    job = copy.deepcopy(jobs[0])
    job["metadata"]["uid"] = "preflight-uid"
    return job


def finished_pod(job: JSON, message: str, exit_code: int) -> JSON:
    """The preflight pod as a kubelet leaves it: terminated, message from the log file."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job['metadata']['name']}-x7k2p",
            "labels": dict(job["spec"]["template"]["metadata"]["labels"]),
            "ownerReferences": [
                {"kind": "Job", "name": job["metadata"]["name"], "uid": "preflight-uid"}
            ],
        },
        "status": {
            "phase": "Failed" if exit_code else "Succeeded",
            "containerStatuses": [
                {
                    "name": "preflight",
                    "state": {"terminated": {"exitCode": exit_code, "message": message}},
                }
            ],
        },
    }


def after_preflight(message: str, exit_code: int) -> tuple[JSON, Observed, Plan]:
    body = fresh()
    first = plan(body, Observed(), OPTIONS, now=NOW)
    job = preflight_job_of(first)
    observed = Observed(
        preflight_job=job,
        pods=(finished_pod(job, message, exit_code),),
        revisions=tuple(applied(first, "ControllerRevision")),
    )
    body = after(body, first)
    return body, observed, plan(body, observed, OPTIONS, now=LATER)


def test_a_new_tuning_workspace_is_checked_on_a_cpu_pod_and_requests_no_gpu_node() -> None:
    result = plan(fresh(), Observed(), OPTIONS, now=NOW)
    assert applied(result, "NodeClaim") == []
    job = preflight_job_of(result)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert GPU_RESOURCE not in json.dumps(pod)
    assert "tolerations" not in pod
    assert "--check" in container["args"]
    assert "--termination-log=/dev/termination-log" in container["args"]
    assert any(a.startswith("--url=https://huggingface.co/") for a in container["args"])
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert job["spec"]["backoffLimit"] == 0
    assert condition(result.status, "DatasetValidated")["reason"] == "PreflightRunning"
    assert result.status is not None and result.status["state"] == "Pending"
    assert [c["metadata"]["name"] for c in applied(result, "ConfigMap")] == [
        "qlora-params-template"
    ]


def test_a_broken_dataset_fails_with_the_file_row_and_column_and_no_gpu_node() -> None:
    _, _, result = after_preflight(json.dumps(BAD_ROW), 2)
    message = condition(result.status, "WorkspaceSucceeded")["message"]
    assert "train-00000.parquet, row 17, column 'messages'" in message
    assert condition(result.status, "WorkspaceSucceeded")["reason"] == "PreflightFailed"
    assert condition(result.status, "DatasetValidated")["status"] == "False"
    assert result.status is not None and result.status["state"] == "Failed"
    assert applied(result, "NodeClaim") == []
    assert result.requeue_after is None


def test_a_good_dataset_is_recorded_with_rows_and_tokens_then_the_node_is_requested() -> None:
    body, _, result = after_preflight(json.dumps(GOOD), 0)
    validated = condition(result.status, "DatasetValidated")
    assert validated["status"] == "True"
    assert "14250 train / 750 eval rows" in validated["message"]
    assert "p95 611" in validated["message"]
    assert len(applied(result, "NodeClaim")) == 1
    # Once passed it stays passed, even after the preflight pod is gone.
    later = plan(after(body, result), Observed(), OPTIONS, now=LATER)
    assert len(applied(later, "NodeClaim")) == 1


def test_a_crashed_preflight_reports_the_tail_of_its_log() -> None:
    _, _, result = after_preflight("Traceback ...\nMemoryError", 137)
    message = condition(result.status, "WorkspaceSucceeded")["message"]
    assert "exited 137" in message and "MemoryError" in message
    assert applied(result, "NodeClaim") == []


def test_the_skip_annotation_requests_the_node_at_once() -> None:
    body = adding(fresh(), "metadata.annotations", {ANNOTATION_SKIP_PREFLIGHT: "true"})
    result = plan(body, Observed(), OPTIONS, now=NOW)
    assert len(applied(result, "NodeClaim")) == 1
    assert not [j for j in applied(result, "Job") if j["metadata"]["name"].endswith("-preflight")]
    assert condition(result.status, "DatasetValidated")["reason"] == "PreflightSkipped"


def test_fixing_the_input_after_a_failure_checks_the_new_input() -> None:
    body, observed, result = after_preflight(json.dumps(BAD_ROW), 2)
    fixed = with_(after(body, result), "tuning.input.urls", ["https://example.com/fixed.parquet"])
    replan = plan(fixed, observed, OPTIONS, now=LATER)
    assert [(d.kind, d.name, d.propagation) for d in replan.delete] == [
        ("Job", f"{NAME}-preflight", "Foreground")
    ]
    assert condition(replan.status, "DatasetValidated")["reason"] == "PreflightRunning"
    assert applied(replan, "NodeClaim") == []


def test_a_job_on_cpu_nodes_skips_the_preflight_and_a_gpu_job_does_not() -> None:
    from tests.unit.controller.test_cpu_placement import cpu_node, small_tuning

    cpu_body = small_tuning()
    cpu_body["status"]["conditions"] = []  # not validated yet
    result = plan(cpu_body, Observed(nodes=(cpu_node(),)), OPTIONS, now=NOW)
    validated = condition(result.status, "DatasetValidated")
    assert (validated["status"], validated["reason"]) == ("True", "PreflightSkipped")
    assert "CPU" in validated["message"]
    names = [j["metadata"]["name"] for j in applied(result, "Job")]
    assert names == ["tune-small"]  # the tuning Job itself, no preflight Job
    gpu = plan(fresh(), Observed(), OPTIONS, now=NOW)
    assert condition(gpu.status, "DatasetValidated")["reason"] == "PreflightRunning"
