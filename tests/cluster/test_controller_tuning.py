"""Tuning in the cluster: dataset preflight before GPUs, progress in status, resume on a PVC."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from kaito.contract.progress import ANNOTATION as ANNOTATION_TUNING_PROGRESS
from kaito.devcluster import ApiClient
from kaito.devcluster.nodes import fake_node
from tests.cluster.test_controller_workspace import (
    Proc,
    StartOperator,
    claims_of,
    crds,
    create_workspace,
    listed,
    simulator,
    start_operator,
    wait_condition,
    workspace_path,
)
from tests.support.kubelet import finish_preflight
from tests.unit.api.builders import tuning_workspace

__all__ = ["crds", "simulator", "start_operator"]

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

JSON = dict[str, Any]
BAD_ROW = {
    "ok": False,
    "errors": [
        {
            "file": "/mnt/data/train.parquet",
            "row": 17,
            "column": "messages",
            "message": "expected a list of {role, content} messages",
        }
    ],
}


def tuning_body(name: str) -> JSON:
    body: JSON = tuning_workspace(name=name)
    body["resource"]["labelSelector"] = {"matchLabels": {"app": name}}
    return body


def trainer_pods(api: ApiClient, namespace: str, name: str) -> list[JSON]:
    pods = listed(api, f"/api/v1/namespaces/{namespace}/pods", f"job-name={name}")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def report(api: ApiClient, pod: JSON, step: int, phase: str = "training") -> None:
    """Annotate the pod with its progress.json, as the tuning pod does for itself."""
    document = {
        "phase": phase,
        "step": step,
        "total_steps": 40,
        "epoch": step / 40,
        "loss": round(2.0 - step / 40, 3),
        "tokens_per_second": 950.0,
        "eta_seconds": float(40 - step),
        "updated_at": f"2026-11-28T12:{step:02d}:00Z",  # later steps report later
    }
    meta = pod["metadata"]
    api.request(
        "PATCH",
        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
        {"metadata": {"annotations": {ANNOTATION_TUNING_PROGRESS: json.dumps(document)}}},
        content_type="application/merge-patch+json",
    )


def tuning_status(api: ApiClient, namespace: str, name: str) -> JSON:
    status: JSON = (api.get(workspace_path(namespace, name)).get("status") or {}).get(
        "tuning"
    ) or {}
    return status


def test_a_broken_dataset_fails_in_preflight_with_row_and_column_and_no_nodeclaim(
    api: ApiClient, namespace: str, simulator: Proc, start_operator: StartOperator
) -> None:
    operator = start_operator()
    create_workspace(api, namespace, tuning_body("bad-data"))
    pod = finish_preflight(api, namespace, "bad-data", BAD_ROW, exit_code=2)
    assert "nvidia.com/gpu" not in json.dumps(pod["spec"])

    failed = wait_condition(
        api,
        namespace,
        "bad-data",
        "WorkspaceSucceeded",
        "False",
        reason="PreflightFailed",
        logs=operator,
    )
    assert "train.parquet, row 17, column 'messages'" in failed["message"]
    workspace = api.get(workspace_path(namespace, "bad-data"))
    assert workspace["status"]["state"] == "Failed"
    time.sleep(3)  # a controller that went on to provision would have made its claim by now
    assert claims_of(api, namespace, "bad-data") == []


def test_progress_rises_in_the_status_while_the_pod_reports_and_the_final_metrics_stay(
    api: ApiClient, namespace: str, kubectl: Any, simulator: Proc, start_operator: StartOperator
) -> None:
    operator = start_operator()
    create_workspace(api, namespace, tuning_body("progress"))
    finish_preflight(api, namespace, "progress")
    wait_condition(api, namespace, "progress", "DatasetValidated", logs=operator)
    pod = api.wait_for(
        lambda: next(iter(trainer_pods(api, namespace, "progress")), None),
        timeout_s=90,
        what="the tuning pod",
    )
    claim = api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/progress-results")
    assert claim["metadata"]["ownerReferences"][0]["name"] == "progress"

    seen = []
    for step in (4, 20, 36):
        report(api, pod, step)
        status = api.wait_for(
            lambda s=step: (t := tuning_status(api, namespace, "progress")).get("step") == s and t,
            timeout_s=30,
            what=f"step {step} in the status",
        )
        seen.append(status["progressPercent"])
    assert seen == [10, 50, 90]

    report(api, pod, 40, phase="completed")
    wait_condition(api, namespace, "progress", "WorkspaceSucceeded", timeout_s=120, logs=operator)
    final = api.wait_for(
        lambda: (t := tuning_status(api, namespace, "progress")).get("phase") == "completed" and t,
        timeout_s=30,
        what="the final metrics",
    )
    assert (final["progressPercent"], final["loss"]) == (100, 1.0)
    printed = kubectl(
        "get", "workspace", "progress", "-o", "custom-columns=P:.status.tuning.progressPercent"
    )
    assert printed.stdout.split()[-1] == "100"
    described = kubectl("describe", "workspace", "progress").stdout
    assert re.search(r"Progress Percent:\s+100\n", described), described


def test_a_deleted_tuning_pod_is_replaced_by_one_that_mounts_the_same_claim(
    api: ApiClient, namespace: str, start_operator: StartOperator
) -> None:
    # A node no kwok plays kubelet for: its pods stay "running" (scheduled, never finished),
    # where kwok would complete a Job's pod at once.
    node = fake_node(f"gpu-{namespace[-6:]}", gpus=1, labels={"app": "resume"})
    node["metadata"]["annotations"].pop("kwok.x-k8s.io/node")
    node["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
    api.create(node)
    try:
        operator = start_operator(node_provisioner="byo")
        body = tuning_body("resume")
        body["resource"]["instanceType"] = node["metadata"]["labels"][
            "node.kubernetes.io/instance-type"
        ]
        body["metadata"]["annotations"] = {"kaito.sh/skip-preflight": "true"}
        create_workspace(api, namespace, body)
        first = api.wait_for(
            lambda: next(
                (p for p in trainer_pods(api, namespace, "resume") if p["spec"].get("nodeName")),
                None,
            ),
            timeout_s=90,
            what="the tuning pod on the node",
        )
        claim_path = f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/resume-results"
        claim_uid = api.get(claim_path)["metadata"]["uid"]
        api.request(
            "DELETE",
            f"/api/v1/namespaces/{namespace}/pods/{first['metadata']['name']}",
            {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
        )
        second = api.wait_for(
            lambda: next(
                (
                    p
                    for p in trainer_pods(api, namespace, "resume")
                    if p["metadata"]["uid"] != first["metadata"]["uid"]
                ),
                None,
            ),
            timeout_s=60,
            what="a replacement pod",
        )
        volumes = {v["name"]: v for v in second["spec"]["volumes"]}
        assert volumes["results-volume"]["persistentVolumeClaim"] == {"claimName": "resume-results"}
        assert api.get(claim_path)["metadata"]["uid"] == claim_uid
        restarts = api.wait_for(
            lambda: tuning_status(api, namespace, "resume").get("restarts"),
            timeout_s=60,
            what="the restart in the status",
        )
        assert restarts == 1, operator.tail()
    finally:
        api.delete(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node["metadata"]["name"]}}
        )
