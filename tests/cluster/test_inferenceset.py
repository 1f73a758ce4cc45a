"""Scale out on a real control plane with kwok nodes: `kubectl scale` on a Workspace, and the
InferenceSet controller keeping N Workspaces (and N x nodes per replica NodeClaims)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from kaito.devcluster import ApiClient, install_crd
from tests.cluster.test_admission_fail_closed import served, webhook_operator
from tests.cluster.test_controller_workspace import (
    REPO,
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
__all__ = ["crds", "simulator", "start_operator", "webhook_operator"]  # fixtures this module uses

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
        lambda: (
            (api.get(workspace_path(namespace, name)).get("status") or {}).get("readyReplicas") == 3
            or None
        ),
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


# --- InferenceSet -------------------------------------------------------------------------

SET_CRD = REPO / "charts" / "kaito" / "crds" / "kaito.sh_inferencesets.yaml"


@pytest.fixture(scope="module")
def set_crd(api: ApiClient, crds: None) -> None:
    install_crd(api, yaml.safe_load(SET_CRD.read_text()))


def set_path(namespace: str, name: str = "") -> str:
    return f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/inferencesets" + (
        f"/{name}" if name else ""
    )


def set_body(name: str, replicas: int, **spec: Any) -> JSON:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "InferenceSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "labelSelector": {"matchLabels": {"apps": name}},
            "template": {
                "resource": {"instanceType": SKU},
                "inference": {"preset": {"name": PRESET}},
            },
            **spec,
        },
    }


def members(api: ApiClient, namespace: str, name: str) -> list[JSON]:
    items: list[JSON] = api.request(
        "GET",
        f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces",
        query={"labelSelector": f"kaito.sh/inferenceset={name}"},
    )["items"]
    return sorted(
        (w for w in items if not w["metadata"].get("deletionTimestamp")),
        key=lambda w: str(w["metadata"]["name"]),
    )


def set_claims(api: ApiClient, namespace: str, name: str, replicas: int) -> list[JSON]:
    return [c for i in range(replicas + 3) for c in live_claims(api, namespace, f"{name}-{i}")]


def set_status(api: ApiClient, namespace: str, name: str) -> JSON:
    return dict(api.get(set_path(namespace, name)).get("status") or {})


def wait_ready(api: ApiClient, namespace: str, name: str, count: int, operator: Proc) -> None:
    def probe() -> bool | None:
        status = set_status(api, namespace, name)
        return (status.get("readyReplicas") == count and status.get("replicas") == count) or None

    try:
        api.wait_for(probe, timeout_s=180, interval_s=1.0, what=f"{count} ready replicas")
    except TimeoutError:
        raise AssertionError(
            f"status: {set_status(api, namespace, name)}\n{operator.tail()}"
        ) from None


def test_an_inferenceset_keeps_n_workspaces_on_n_nodes_and_follows_kubectl_scale(
    api: ApiClient,
    namespace: str,
    kubectl: Any,
    simulator: Proc,
    set_crd: None,
    start_operator: StartOperator,
) -> None:
    operator = start_operator()
    name = "chat"
    created = api.create({**set_body(name, 2), "metadata": {"name": name, "namespace": namespace}})
    wait_ready(api, namespace, name, 2, operator)

    workspaces = members(api, namespace, name)
    assert [w["metadata"]["name"] for w in workspaces] == [f"{name}-0", f"{name}-1"]
    for ws in workspaces:
        (owner,) = ws["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "InferenceSet",
            created["metadata"]["uid"],
            True,
        )
    assert len(set_claims(api, namespace, name, 2)) == 2
    service = api.get(f"/api/v1/namespaces/{namespace}/services/{name}")
    assert service["spec"]["selector"] == {"kaito.sh/inferenceset": name}
    pods = api.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods",
        query={"labelSelector": f"kaito.sh/inferenceset={name}"},
    )["items"]
    assert sorted(p["metadata"]["labels"]["kaito.sh/workspace"] for p in pods) == [
        f"{name}-0",
        f"{name}-1",
    ]

    kubectl("scale", f"inferenceset/{name}", "--replicas=3")
    wait_ready(api, namespace, name, 3, operator)
    assert len(set_claims(api, namespace, name, 3)) == 3
    scale = json.loads(
        kubectl("get", f"inferenceset/{name}", "--subresource=scale", "-o=json").stdout
    )
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (3, 3)
    assert scale["status"]["selector"] == f"kaito.sh/inferenceset={name}"

    kubectl("scale", f"inferenceset/{name}", "--replicas=1")
    api.wait_for(
        lambda: len(set_claims(api, namespace, name, 3)) == 1 or None,
        timeout_s=120,
        what="the removed replicas' NodeClaims gone",
    )
    wait_ready(api, namespace, name, 1, operator)
    assert [w["metadata"]["name"] for w in members(api, namespace, name)] == [f"{name}-0"]

    # A template change replaces the replica with one of the new template.
    before = members(api, namespace, name)[0]["metadata"]["uid"]
    api.request(
        "PATCH",
        set_path(namespace, name),
        {"spec": {"template": {"metadata": {"labels": {"team": "blue"}}}}},
        content_type="application/merge-patch+json",
    )

    def rolled() -> bool | None:
        found = members(api, namespace, name)
        return (
            len(found) == 1
            and found[0]["metadata"]["uid"] != before
            and found[0]["metadata"]["labels"].get("team") == "blue"
        ) or None

    api.wait_for(rolled, timeout_s=120, interval_s=1.0, what="the replica on the new template")
    wait_ready(api, namespace, name, 1, operator)

    # Deleting the set takes its Workspaces, and so their NodeClaims, with it.
    api.delete(
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "InferenceSet",
            "metadata": {"name": name, "namespace": namespace},
        }
    )
    api.wait_for(
        lambda: (
            (not members(api, namespace, name) and not set_claims(api, namespace, name, 3)) or None
        ),
        timeout_s=120,
        what="the Workspaces and NodeClaims of the deleted set gone",
    )


def test_replicas_past_the_node_count_limit_are_refused_in_status(
    api: ApiClient,
    namespace: str,
    simulator: Proc,
    set_crd: None,
    start_operator: StartOperator,
) -> None:
    operator = start_operator()
    name = "capped"
    body = set_body(name, 3, nodeCountLimit=2)
    api.create({**body, "metadata": {"name": name, "namespace": namespace}})
    wait_ready(api, namespace, name, 2, operator)
    assert len(members(api, namespace, name)) == 2
    assert len(set_claims(api, namespace, name, 3)) == 2
    conditions = {c["type"]: c for c in set_status(api, namespace, name)["conditions"]}
    refusal = conditions["NodeCountLimitExceeded"]
    assert refusal["status"] == "True", refusal
    assert "nodeCountLimit 2" in refusal["message"]
    assert conditions["InferenceSetReady"]["status"] == "False"

    # Raising the limit lets the third replica in.
    api.request(
        "PATCH",
        set_path(namespace, name),
        {"spec": {"nodeCountLimit": 3}},
        content_type="application/merge-patch+json",
    )
    wait_ready(api, namespace, name, 3, operator)
    conditions = {c["type"]: c for c in set_status(api, namespace, name)["conditions"]}
    assert conditions["NodeCountLimitExceeded"]["status"] == "False"
    assert conditions["InferenceSetReady"]["status"] == "True"


def test_the_hpa_controller_drives_an_inferenceset_through_its_scale_subresource(
    api: ApiClient,
    namespace: str,
    kubectl: Any,
    simulator: Proc,
    set_crd: None,
    start_operator: StartOperator,
) -> None:
    """kube-controller-manager's HPA reads the set's Scale and, below minReplicas, writes it:
    the same path KEDA takes. (No metrics adapter runs here, so only the bounds act.)"""
    operator = start_operator()
    name = "autoscaled"
    body = {**set_body(name, 1), "metadata": {"name": name, "namespace": namespace}}
    api.create(body)
    wait_ready(api, namespace, name, 1, operator)
    generated = subprocess.run(
        [sys.executable, "-m", "kaito", "autoscale", "-f", "-", "--with", "hpa", "--min", "2"],
        input=yaml.safe_dump(body),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kubectl("apply", "-f", "-", input=generated)
    api.wait_for(
        lambda: api.get(set_path(namespace, name))["spec"]["replicas"] == 2 or None,
        timeout_s=120,
        interval_s=1.0,
        what="the HPA to raise the set to its minReplicas",
    )
    wait_ready(api, namespace, name, 2, operator)
    assert len(set_claims(api, namespace, name, 2)) == 2
    hpa = api.get(f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{name}")
    able = next(c for c in hpa["status"]["conditions"] if c["type"] == "AbleToScale")
    assert able["status"] == "True", hpa["status"]
    assert hpa["status"]["desiredReplicas"] == 2


def test_the_webhook_judges_the_template_by_the_workspace_rules(
    api: ApiClient, namespace: str, kubectl: Any, set_crd: None, webhook_operator: Any
) -> None:
    webhook_operator()
    served(api, kubectl, namespace)  # the Workspace webhook answers: so does the set's
    body = set_body("typo", 1)
    body["metadata"]["namespace"] = namespace
    body["spec"]["template"]["inference"]["preset"]["name"] = "phi-3-mini-4k-instruc"
    result = kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert result.returncode != 0, "a template with an unknown preset got in"
    assert "spec.template (checked as a Workspace)" in result.stderr
    assert "phi-3-mini-4k-instruct" in result.stderr  # the Workspace rule's suggestion
    good = set_body("fine", 1)
    good["metadata"]["namespace"] = namespace
    assert kubectl("apply", "-f", "-", input=yaml.safe_dump(good), check=False).returncode == 0


def test_multi_node_replicas_take_n_times_their_nodes_within_the_limit(
    api: ApiClient,
    namespace: str,
    simulator: Proc,
    set_crd: None,
    start_operator: StartOperator,
) -> None:
    """llama-3.3-70b with transformers on two 2-GPU A100 nodes per replica: 2 replicas want
    4 nodes; nodeCountLimit 3 lets one replica (2 NodeClaims) in and says why not the other."""
    operator = start_operator()
    name = "llama"
    body = set_body(name, 2, nodeCountLimit=3)
    template = body["spec"]["template"]
    template["metadata"] = {"annotations": {"kaito.sh/runtime": "transformers"}}
    template["resource"] = {"instanceType": "Standard_NC48ads_A100_v4", "count": 2}
    template["inference"] = {
        "preset": {"name": "llama-3.3-70b-instruct", "modelAccessSecret": "hf-token"}
    }
    api.create({**body, "metadata": {"name": name, "namespace": namespace}})
    api.wait_for(
        lambda: len(set_claims(api, namespace, name, 2)) == 2 or None,
        timeout_s=90,
        what="two NodeClaims for the one replica that fits",
    )
    assert [w["metadata"]["name"] for w in members(api, namespace, name)] == [f"{name}-0"]

    def refused() -> JSON | None:
        conditions = set_status(api, namespace, name).get("conditions") or []
        found = next((c for c in conditions if c["type"] == "NodeCountLimitExceeded"), None)
        return found if found and found["status"] == "True" else None

    refusal = api.wait_for(refused, timeout_s=60, what="the refusal in status")
    assert "2 per replica" in refusal["message"] and "nodeCountLimit 3" in refusal["message"]

    api.request(
        "PATCH",
        set_path(namespace, name),
        {"spec": {"nodeCountLimit": 4}},
        content_type="application/merge-patch+json",
    )
    api.wait_for(
        lambda: len(set_claims(api, namespace, name, 2)) == 4 or None,
        timeout_s=90,
        what="four NodeClaims for two replicas of two nodes",
    )
    assert len(members(api, namespace, name)) == 2, operator.tail()
