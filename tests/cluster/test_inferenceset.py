"""Scale out on a real control plane with kwok nodes: `kubectl scale` on a Workspace, and the
InferenceSet controller keeping N Workspaces (and N x nodes per replica NodeClaims)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kaito.devcluster import ApiClient
from tests.cluster.test_controller_workspace import (
    Proc,
    StartOperator,
    claims_of,
    crds,
    create_workspace,
    inference_body,
    simulator,
    start_operator,
    wait_condition,
    workspace_path,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
__all__ = ["crds", "simulator", "start_operator"]  # fixtures this module uses

JSON = dict[str, Any]
PRESET = "phi-3-mini-4k-instruct"
SKU = "Standard_NC24ads_A100_v4"


def live_claims(api: ApiClient, namespace: str, name: str) -> list[JSON]:
    return [
        c
        for c in claims_of(api, namespace, name)
        if not (c.get("metadata") or {}).get("deletionTimestamp")
    ]


def test_kubectl_scale_grows_and_shrinks_a_workspace_with_its_nodeclaims(
    api: ApiClient, namespace: str, kubectl: Any, simulator: Proc, start_operator: StartOperator
) -> None:
    operator = start_operator()
    name = "scaled"
    create_workspace(api, namespace, inference_body(name, PRESET, SKU))
    wait_condition(api, namespace, name, "WorkspaceSucceeded", timeout_s=120, logs=operator)

    scale = json.loads(kubectl("get", f"workspace/{name}", "--subresource=scale", "-o=json").stdout)
    assert scale["kind"] == "Scale"
    assert scale["status"]["replicas"] == 1
    assert scale["status"]["selector"] == f"kaito.sh/workspace={name}"

    kubectl("scale", f"workspace/{name}", "--replicas=3")
    api.wait_for(
        lambda: len(live_claims(api, namespace, name)) == 3 or None,
        timeout_s=90,
        what="three NodeClaims",
    )
    sts_path = f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}"
    api.wait_for(
        lambda: (api.get(workspace_path(namespace, name)).get("status") or {}).get("readyReplicas")
        == 3
        or None,
        timeout_s=120,
        what="three ready replicas in the Workspace status",
    )
    assert api.get(sts_path)["spec"]["replicas"] == 3
    status = api.get(workspace_path(namespace, name))["status"]
    assert (status["replicas"], status["targetNodeCount"], status["perReplicaNodeCount"]) == (
        3,
        3,
        1,
    )
    service = api.get(f"/api/v1/namespaces/{namespace}/services/{name}")
    assert service["spec"]["selector"] == {"kaito.sh/workspace": name}

    kubectl("scale", f"workspace/{name}", "--replicas=1")
    api.wait_for(
        lambda: len(live_claims(api, namespace, name)) == 1 or None,
        timeout_s=90,
        what="the claims no pod needs released",
    )
    assert api.get(sts_path)["spec"]["replicas"] == 1
    wait_condition(api, namespace, name, "WorkspaceSucceeded", timeout_s=120, logs=operator)


def test_kubectl_scale_of_a_tuning_workspace_is_refused(
    api: ApiClient, namespace: str, kubectl: Any, crds: None
) -> None:
    from tests.cluster.test_controller_workspace import LEGACY_EXAMPLE

    kubectl("apply", "-f", str(LEGACY_EXAMPLE))
    result = kubectl("scale", "workspace/workspace-tuning-phi-3", "--replicas=2", check=False)
    assert result.returncode != 0
    assert "spec.replicas" in result.stderr
