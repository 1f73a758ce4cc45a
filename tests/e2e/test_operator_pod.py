"""The chart's operator as a Pod: `helm install` with the image built from
docker/operator.Dockerfile, on the real node, under the chart's ServiceAccount and RBAC.

Nothing runs as a local process here: the image is built by `kaito.devcluster.images`, pulled
by containerd, the operator reaches the apiserver through the `kubernetes` Service with its
ServiceAccount token, and the apiserver calls its webhook through the chart's Service
(kube-proxy).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.devcluster import ApiClient, ControlPlane, kubectl_path
from kaito.devcluster.images import Builder, ImageRefs, build_images
from kaito.devcluster.realnode import NODE_LABEL, TOLERATION, RealNode
from tests.support.images import image_builder, image_registry
from tests.support.registry import LocalRegistry
from tests.unit.deploy.chart import CHART, require_helm, set_flags

pytestmark = [pytest.mark.slow]
__all__ = ["image_builder", "image_registry"]  # fixtures this module uses

JSON = dict[str, Any]
RELEASE = "kaito"
WEBHOOK = "validation.workspace.kaito.sh"
VWC_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
# Cold: the operator image is pulled and unpacked on the node first.
ROLLOUT_S = 300
PERMISSION_ERRORS = ("forbidden", "Forbidden", "status=403", "'code': 403", "Not enough RBAC")


@dataclass
class PodRelease:
    control_plane: ControlPlane
    api: ApiClient
    helm: Path
    namespace: str
    workloads: str
    images: ImageRefs

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
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(kubectl_path()), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.control_plane.env(),
            timeout=120,
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


@pytest.fixture(scope="module")
def operator_image(image_registry: LocalRegistry, image_builder: Builder) -> ImageRefs:
    """The operator image in the registry (built when its inputs changed); the runtime's
    reference is computed but not built (no workload runs here)."""
    return build_images(
        image_registry.host, only=("operator",), builder=image_builder, log=image_builder.log
    )


@pytest.fixture(scope="module")
def pod_release(
    control_plane: ControlPlane,
    api: ApiClient,
    real_node: RealNode,
    image_registry: LocalRegistry,
    operator_image: ImageRefs,
    nodeclaim_crd: JSON,
) -> Iterator[PodRelease]:
    helm = require_helm()
    real_node.trust_registry(image_registry.host)
    suffix = secrets.token_hex(3)
    release = PodRelease(
        control_plane,
        api,
        helm,
        f"kaito-pod-{suffix}",
        f"pod-workloads-{suffix}",
        operator_image,
    )
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": release.workloads}})
    operator_repo, _, operator_tag = operator_image.operator.rpartition(":")
    runtime_repo, _, runtime_tag = operator_image.runtime.rpartition(":")
    values: JSON = {
        "image.repository": operator_repo,
        "image.tag": operator_tag,
        "runtime.repository": runtime_repo,
        "runtime.tag": runtime_tag,
        "watchNamespace": release.workloads,
        "nodeSelector": {NODE_LABEL: "true"},
        "tolerations": [TOLERATION],
    }
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
        for name in (release.workloads, release.namespace):
            api.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def test_the_operator_runs_as_a_pod_on_the_real_node_with_the_charts_identity(
    pod_release: PodRelease, real_node: RealNode
) -> None:
    (pod,) = pod_release.operator_pods()
    assert pod["spec"]["nodeName"] == real_node.name
    assert pod["spec"]["serviceAccountName"] == RELEASE
    (container,) = pod["status"]["containerStatuses"]
    # containerd names an image by the first reference it was pulled under; the test registries
    # share one store on different ports, so compare what follows the registry address.
    assert container["image"].split("/", 1)[1] == pod_release.images.operator.split("/", 1)[1]
    assert container["ready"] is True
    assert container["restartCount"] == 0
    # The pod's own token reached the apiserver: kopf would not be healthy otherwise, and no
    # request it made was refused.
    time.sleep(2)
    logs = pod_release.logs()
    assert logs, "the operator pod logged nothing"
    assert [line for line in logs.splitlines() if any(m in line for m in PERMISSION_ERRORS)] == []


def test_the_webhook_served_from_the_pod_rejects_an_invalid_workspace(
    pod_release: PodRelease,
) -> None:
    config = pod_release.api.wait_for(
        lambda: pod_release.api.get(f"{VWC_PATH}/{WEBHOOK}"),
        timeout_s=60,
        what="the webhook the operator pod registers",
    )
    service = config["webhooks"][0]["clientConfig"]["service"]
    assert service["namespace"] == pod_release.namespace
    typo = yaml.safe_dump(
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "Workspace",
            "metadata": {"name": "typo", "namespace": pod_release.workloads},
            "resource": {
                "instanceType": "Standard_NC24ads_A100_v4",
                "labelSelector": {"matchLabels": {"app": "typo"}},
            },
            "inference": {"preset": {"name": "phi-3-mini-4k-instruc"}},
        }
    )
    denied = f'admission webhook "workspace.{WEBHOOK}" denied the request'
    attempts: list[subprocess.CompletedProcess[str]] = []

    def answered() -> bool:
        # The chart registers the webhook at install; the pod serves it once the operator has
        # started (until then the apiserver's call is refused and the write fails closed).
        attempts.append(pod_release.kubectl("apply", "-f", "-", input=typo, check=False))
        assert attempts[-1].returncode != 0, "the invalid Workspace was admitted"
        return denied in attempts[-1].stderr

    started = time.monotonic()
    try:
        pod_release.api.wait_for(
            answered, timeout_s=120, interval_s=2, what="the webhook in the operator pod"
        )
    except TimeoutError:
        raise AssertionError(f"{attempts[-1].stderr}\n{pod_release.logs()[-3000:]}") from None
    print(f"webhook answered {time.monotonic() - started:.1f} s after the rollout")
    result = attempts[-1]
    assert "phi-3-mini-4k-instruct" in result.stderr  # the suggestion for the typo
    assert not pod_release.api.exists(
        f"/apis/kaito.sh/v1beta1/namespaces/{pod_release.workloads}/workspaces/typo"
    )
