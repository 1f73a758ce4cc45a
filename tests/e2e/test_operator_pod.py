"""The chart's operator as a Pod: `helm install` with the image built from
docker/operator.Dockerfile, on the real node, under the chart's ServiceAccount and RBAC.

Nothing runs as a local process here: the image is built by `kaito.devcluster.images`, pulled
by containerd, the operator reaches the apiserver through the `kubernetes` Service with its
ServiceAccount token, and the apiserver calls its webhook through the chart's Service
(kube-proxy).
"""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml

from kaito.devcluster.realnode import RealNode
from tests.e2e.conftest import RELEASE, VWC_PATH, WEBHOOK, PodRelease

pytestmark = [pytest.mark.slow]

PERMISSION_ERRORS = ("forbidden", "Forbidden", "status=403", "'code': 403", "Not enough RBAC")


def test_the_operator_runs_as_a_pod_on_the_real_node_with_the_charts_identity(
    operator_release: PodRelease, real_node: RealNode
) -> None:
    (pod,) = operator_release.operator_pods()
    assert pod["spec"]["nodeName"] == real_node.name
    assert pod["spec"]["serviceAccountName"] == RELEASE
    (container,) = pod["status"]["containerStatuses"]
    # containerd names an image by the first reference it was pulled under; the test registries
    # share one store on different ports, so compare what follows the registry address.
    assert container["image"].split("/", 1)[1] == operator_release.images.operator.split("/", 1)[1]
    assert container["ready"] is True
    assert container["restartCount"] == 0
    # The pod's own token reached the apiserver: kopf would not be healthy otherwise, and no
    # request it made was refused.
    time.sleep(2)
    logs = operator_release.logs()
    assert logs, "the operator pod logged nothing"
    assert [line for line in logs.splitlines() if any(m in line for m in PERMISSION_ERRORS)] == []


def test_the_webhook_served_from_the_pod_rejects_an_invalid_workspace(
    operator_release: PodRelease,
) -> None:
    config = operator_release.api.wait_for(
        lambda: operator_release.api.get(f"{VWC_PATH}/{WEBHOOK}"),
        timeout_s=60,
        what="the webhook the operator pod registers",
    )
    service = config["webhooks"][0]["clientConfig"]["service"]
    assert service["namespace"] == operator_release.namespace
    typo = yaml.safe_dump(
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "Workspace",
            "metadata": {"name": "typo", "namespace": operator_release.workloads},
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
        attempts.append(operator_release.kubectl("apply", "-f", "-", input=typo, check=False))
        assert attempts[-1].returncode != 0, "the invalid Workspace was admitted"
        return denied in attempts[-1].stderr

    started = time.monotonic()
    try:
        operator_release.api.wait_for(
            answered, timeout_s=120, interval_s=2, what="the webhook in the operator pod"
        )
    except TimeoutError:
        raise AssertionError(f"{attempts[-1].stderr}\n{operator_release.logs()[-3000:]}") from None
    print(f"webhook answered {time.monotonic() - started:.1f} s after the rollout")
    result = attempts[-1]
    assert "phi-3-mini-4k-instruct" in result.stderr  # the suggestion for the typo
    assert not operator_release.api.exists(
        f"/apis/kaito.sh/v1beta1/namespaces/{operator_release.workloads}/workspaces/typo"
    )
