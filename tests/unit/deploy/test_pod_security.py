"""Pods the operator builds run non-root, without capabilities and without an API token."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from kaito.api.workspace import parse_workspace
from kaito.manifests.common import RUNTIME_UID
from kaito.manifests.context import resolve
from kaito.manifests.inference import build_statefulset
from kaito.manifests.options import ClusterOptions
from kaito.manifests.tuning import build_job
from tests.unit.deploy.chart import REPO

JSON = dict[str, Any]


def stored(body: JSON) -> JSON:
    body["apiVersion"] = "kaito.sh/v1beta1"
    body["metadata"].update(namespace="default", uid="0b3d6c0e", generation=1)
    return body


def tuning_pod() -> JSON:
    body = yaml.safe_load(
        (REPO / "examples" / "fine-tuning" / "kaito_workspace_tuning_phi_3.yaml").read_text()
    )
    ctx = resolve(parse_workspace(stored(body)), ClusterOptions())
    spec: JSON = build_job(ctx)["spec"]["template"]["spec"]
    return spec


def inference_pod() -> JSON:
    body = {
        "metadata": {"name": "phi"},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"app": "phi"}},
        },
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
    }
    ctx = resolve(parse_workspace(stored(body)), ClusterOptions())
    spec: JSON = build_statefulset(ctx)["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("pod", [tuning_pod, inference_pod], ids=["tuning", "inference"])
def test_workload_pods_run_as_the_runtime_images_non_root_user(pod: Any) -> None:
    spec = pod()
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == RUNTIME_UID
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("pod", [tuning_pod, inference_pod], ids=["tuning", "inference"])
def test_every_container_drops_all_capabilities_and_cannot_escalate(pod: Any) -> None:
    spec = pod()
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    assert len(containers) >= 1
    for container in containers:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }, container["name"]


def test_inference_pods_get_no_api_token() -> None:
    spec = inference_pod()
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec  # the namespace's default, with no token mounted


def test_only_the_tuning_trainer_gets_a_token_of_the_kaito_tuning_account() -> None:
    spec = tuning_pod()
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "kaito-tuning"  # may patch pods: its progress
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    with_token = [
        c["name"]
        for c in containers
        if any(m["name"] == "kube-api-access" for m in c.get("volumeMounts", []))
    ]
    assert len(with_token) == 1 and with_token[0] not in ("pusher", "data-downloader")


def test_the_runtime_image_user_matches_the_pods() -> None:
    dockerfile = (REPO / "docker" / "runtime.Dockerfile").read_text()
    assert f"USER {RUNTIME_UID}:{RUNTIME_UID}" in dockerfile
