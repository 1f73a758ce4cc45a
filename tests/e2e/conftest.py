"""E2e fixtures: the session cluster (tests/conftest_cluster.py) plus the chart's operator as a
Pod on the real node, set up the way a platform team would for CPU workloads there.

`operator_release` is installed once per test module: its workloads namespace is watched
by the operator pod, whose workloads tolerate the real node's taint, pull preset weights from
`pod_registries.weights` (a registry on the node bridge, reachable from pods) and push adapters
to `pod_registries.adapters` (one that demands credentials). Nothing here listens wider than the
bridge address the real node creates.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kaito.devcluster import ApiClient, ControlPlane, kaito_home, kubectl_path
from kaito.devcluster.images import ImageRefs
from kaito.devcluster.realnode import NODE_IP, NODE_LABEL, TOLERATION, RealNode
from kaito.presets import get_preset
from tests.conftest_cluster import release_kaito_objects
from tests.support.images import image_builder, image_registry, kaito_images
from tests.support.registry import LocalRegistry, start_registry
from tests.unit.deploy.chart import CHART, require_helm, set_flags

__all__ = ["image_builder", "image_registry", "kaito_images"]  # fixtures re-exported

JSON = dict[str, Any]
RELEASE = "kaito"
WEBHOOK = "validation.workspace.kaito.sh"
VWC_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
# Cold: the operator image is pulled and unpacked on the node first.
ROLLOUT_S = 300
PRESET = "smollm2-135m-instruct"
ADAPTER_USER, ADAPTER_PASSWORD = "kaito", "e2e-" + secrets.token_hex(8)


@dataclass(frozen=True)
class PodRegistries:
    """Registries pods reach on the node bridge: weights (anonymous), adapters (credentials)."""

    weights: LocalRegistry
    adapters: LocalRegistry


@dataclass
class PodRelease:
    """The chart installed with its operator running as a Pod on the real node."""

    control_plane: ControlPlane
    api: ApiClient
    helm: Path
    namespace: str
    workloads: str
    images: ImageRefs
    registries: PodRegistries

    def run_helm(self, *args: str, timeout_s: float = 120) -> str:
        result = subprocess.run(
            [str(self.helm), *args, f"--namespace={self.namespace}"],
            capture_output=True,
            text=True,
            env=self.control_plane.env(),
            timeout=timeout_s,
            check=False,
        )
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(kubectl_path()), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.control_plane.env(),
            timeout=timeout_s,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stderr}"
        return result

    def operator_pods(self) -> list[JSON]:
        found: list[JSON] = self.api.request(
            "GET",
            f"/api/v1/namespaces/{self.namespace}/pods",
            query={"labelSelector": "app.kubernetes.io/name=kaito"},
        )["items"]
        return found

    def logs(self) -> str:
        return self.kubectl(
            f"--namespace={self.namespace}", "logs", f"deployment/{RELEASE}", check=False
        ).stdout


@pytest.fixture(scope="session")
def pod_registries(real_node: RealNode) -> Iterator[PodRegistries]:
    """Two registries on the bridge address (it exists while the real node does).

    The weights registry keeps its blobs under $KAITO_HOME, so a warm run re-pushes nothing.
    """
    weights_dir = kaito_home() / "registry" / "e2e-weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        weights = stack.enter_context(start_registry(weights_dir, address=NODE_IP))
        adapters_dir = weights_dir.parent / f"e2e-adapters-{secrets.token_hex(4)}"
        adapters = stack.enter_context(
            start_registry(
                adapters_dir, address=NODE_IP, username=ADAPTER_USER, password=ADAPTER_PASSWORD
            )
        )
        stack.callback(lambda: subprocess.run(["rm", "-rf", str(adapters_dir)], check=False))
        yield PodRegistries(weights, adapters)


def release_values(images: ImageRefs, workloads: str, registries: PodRegistries) -> JSON:
    """Chart values for the operator pod and its workloads on the real node."""
    operator_repo, _, operator_tag = images.operator.rpartition(":")
    runtime_repo, _, runtime_tag = images.runtime.rpartition(":")
    return {
        "image.repository": operator_repo,
        "image.tag": operator_tag,
        "runtime.repository": runtime_repo,
        "runtime.tag": runtime_tag,
        "watchNamespace": workloads,
        "nodeSelector": {NODE_LABEL: "true"},
        "tolerations": [TOLERATION],
        # What a platform team sets for a dedicated, tainted CPU pool and in-cluster registries.
        "workloads.tolerations": [TOLERATION],
        "presets.registry": registries.weights.host,
        "registries.plainHTTP": [registries.weights.host, registries.adapters.host],
        "tuningInputs.allowedHosts": [NODE_IP],
    }


# Per module: test_helm_user_path.py installs the chart as release "kaito" too (cluster-scoped
# objects of the same names), so this one must be gone before that module starts.
@pytest.fixture(scope="module")
def operator_release(
    control_plane: ControlPlane,
    api: ApiClient,
    real_node: RealNode,
    image_registry: LocalRegistry,
    kaito_images: ImageRefs,
    pod_registries: PodRegistries,
    nodeclaim_crd: JSON,
) -> Iterator[PodRelease]:
    """`helm install --wait` with the images just built; uninstalled (and checked) at the end."""
    helm = require_helm()
    real_node.trust_registry(image_registry.host)
    suffix = secrets.token_hex(3)
    release = PodRelease(
        control_plane,
        api,
        helm,
        f"kaito-pod-{suffix}",
        f"pod-workloads-{suffix}",
        kaito_images,
        pod_registries,
    )
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": release.workloads}})
    values = release_values(kaito_images, release.workloads, pod_registries)
    started = time.monotonic()
    try:
        release.run_helm(
            "install",
            RELEASE,
            str(CHART),
            "--create-namespace",
            "--wait",
            f"--timeout={ROLLOUT_S}s",
            *set_flags(values),
            timeout_s=ROLLOUT_S + 30,
        )
    except AssertionError:
        pods = release.operator_pods()
        raise AssertionError(
            f"{[p.get('status') for p in pods]}\n{release.logs()}\n{real_node.logs_tail()}"
        ) from None
    print(f"helm install --wait to an available operator pod: {time.monotonic() - started:.1f} s")
    try:
        yield release
    finally:
        release.run_helm("uninstall", RELEASE, "--wait", "--timeout=120s")
        # The operator removes its webhook when it stops; make sure, or every later Workspace
        # write would fail closed.
        with contextlib.suppress(Exception):
            api.delete(
                {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingWebhookConfiguration",
                    "metadata": {"name": WEBHOOK},
                }
            )
        # The operator is gone: Workspaces a test left would hold their namespace Terminating.
        release_kaito_objects(api, release.workloads)
        for name in (release.workloads, release.namespace):
            api.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


@pytest.fixture(scope="session")
def weights_image(pod_registries: PodRegistries) -> str:
    """The preset's weights (safetensors for tuning, GGUF for llama.cpp) in the pods' registry,
    under the name the operator derives from `presets.registry`, packaged as a user would."""
    preset = get_preset(PRESET)
    assert preset is not None
    image = preset.weights_image_in(pod_registries.weights.host)
    assert image is not None
    command = [sys.executable, "-m", "kaito", "models", "package", "--small-model"]
    result = subprocess.run(
        [*command, "--image", image, "--insecure"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return image
