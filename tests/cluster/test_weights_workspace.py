"""A Workspace whose preset names a weights image gets the pull stage on a real control plane."""

from __future__ import annotations

import pytest

from kaito.devcluster import ApiClient
from kaito.devcluster.client import JSON
from tests.cluster.test_controller_workspace import (
    Proc,
    StartOperator,
    crds,
    create_workspace,
    inference_body,
    simulator,
    start_operator,
)

__all__ = ["crds", "simulator", "start_operator"]

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

IMAGE = "registry.internal.example/kaito/phi-3-mini-4k-instruct:0.2.0"


def wait_created(api: ApiClient, path: str, operator: Proc, what: str) -> JSON:
    """The object at `path` once the operator made it (wait_for counts a 404 as not yet)."""
    try:
        return api.wait_for(lambda: api.get(path), timeout_s=120, interval_s=0.5, what=what)
    except TimeoutError:
        raise AssertionError(operator.tail()) from None


def test_an_inference_workspace_with_a_weights_image_pulls_it_with_its_secret_into_the_cache(
    api: ApiClient, namespace: str, simulator: Proc, start_operator: StartOperator
) -> None:
    operator = start_operator()
    body = inference_body("mirrored", "phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4")
    body["inference"]["preset"]["presetOptions"] = {
        "image": IMAGE,
        "imagePullSecrets": ["internal-registry"],
    }
    create_workspace(api, namespace, body)
    path = f"/apis/apps/v1/namespaces/{namespace}/statefulsets/mirrored"
    sts = wait_created(api, path, operator, "the StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    puller = spec["initContainers"][0]
    assert puller["name"] == "weights-puller"
    assert puller["command"][3:6] == ["models", "pull", IMAGE]
    assert {"name": "internal-registry"} in spec["imagePullSecrets"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["weights-cache"]["hostPath"]["path"] == "/var/lib/kaito/weights-cache"
    projected = volumes["docker-config-weights"]["projected"]["sources"]
    assert projected[0]["secret"]["name"] == "internal-registry"
    assert "--model=/workspace/weights" in spec["containers"][0]["args"]


MIRROR = "registry.internal.example/kaito"


def test_a_catalog_preset_in_the_operators_preset_registry_is_pulled_by_the_created_pod(
    api: ApiClient, namespace: str, simulator: Proc, start_operator: StartOperator
) -> None:
    # No image in the Workspace: the preset itself names one, because the operator is
    # configured with a preset registry (chart value presets.registry) and its pull secret.
    operator = start_operator(preset_registry=MIRROR, preset_pull_secrets="mirror-pull")
    body = inference_body("catalog", "phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4")
    create_workspace(api, namespace, body)
    path = f"/api/v1/namespaces/{namespace}/pods/catalog-0"
    spec = wait_created(api, path, operator, "the inference pod")["spec"]
    puller = spec["initContainers"][0]
    assert puller["name"] == "weights-puller"
    image = f"{MIRROR}/kaito-phi-3-mini-4k-instruct:0.2.0"
    assert puller["command"][3:6] == ["models", "pull", image]
    assert {"name": "mirror-pull"} in spec["imagePullSecrets"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["weights-cache"]["hostPath"] == {
        "path": "/var/lib/kaito/weights-cache",
        "type": "DirectoryOrCreate",
    }
    assert {"name": "weights-cache", "mountPath": "/var/cache/kaito"} in puller["volumeMounts"]
    projected = volumes["docker-config-weights"]["projected"]["sources"]
    assert projected[0]["secret"]["name"] == "mirror-pull"
    assert "--model=/workspace/weights" in spec["containers"][0]["args"]
