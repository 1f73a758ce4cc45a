"""metrics-server's manifests for the dev cluster and the apiserver's aggregation flags,
checked without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaito.devcluster import ControlPlane
from kaito.devcluster import metrics as ms
from kaito.devcluster.pki import FRONT_PROXY_CLIENT_USER, generate_pki
from kaito.devcluster.realnode import NODE_LABEL, TOLERATION


def objects() -> dict[str, dict[str, object]]:
    found = ms.manifests("registry.test/ms:1", node_selector={NODE_LABEL: "true"})
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in found}


def test_only_the_real_node_is_scraped_and_its_certificate_is_checked() -> None:
    deployment = ms.manifests(
        "registry.test/ms:1", node_selector={NODE_LABEL: "true"}, tolerations=[TOLERATION]
    )[-2]
    assert deployment["kind"] == "Deployment"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert f"--node-selector={NODE_LABEL}=true" in container["args"]
    assert "--kubelet-preferred-address-types=InternalIP" in container["args"]
    assert not [a for a in container["args"] if "insecure" in a]
    assert pod["nodeSelector"] == {NODE_LABEL: "true"}
    assert pod["tolerations"] == [TOLERATION]
    assert pod["serviceAccountName"] == ms.NAME


def test_the_apiservice_points_at_the_service_and_rbac_lets_it_read_kubelets() -> None:
    found = objects()
    api_service = found[f"APIService/{ms.API_SERVICE}"]
    assert api_service["spec"]["service"] == {  # type: ignore[index]
        "name": ms.NAME,
        "namespace": ms.NAMESPACE,
        "port": 443,
    }
    role = found[f"ClusterRole/system:{ms.NAME}"]
    assert {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]} in role["rules"]  # type: ignore[operator]
    assert "ClusterRoleBinding/metrics-server:system:auth-delegator" in found
    assert "RoleBinding/metrics-server-auth-reader" in found


@pytest.mark.parametrize(
    ("quantity", "millicores"),
    [("250m", 250), ("123456789n", 123), ("1500u", 2), ("2", 2000), ("0", 0)],
)
def test_cpu_quantities_as_metrics_server_writes_them(quantity: str, millicores: int) -> None:
    assert ms.millicores(quantity) == millicores


def test_the_apiserver_proxies_aggregated_apis_with_the_front_proxy_identity(
    tmp_path: Path,
) -> None:
    plane = ControlPlane(tmp_path)
    plane._pki = generate_pki(tmp_path / "pki")
    args = plane._apiserver_args()
    front = plane.pki.clients["front-proxy-client"]
    assert f"--proxy-client-cert-file={front.cert}" in args
    assert f"--requestheader-allowed-names={FRONT_PROXY_CLIENT_USER}" in args
    assert f"--requestheader-client-ca-file={plane.pki.ca.cert}" in args
