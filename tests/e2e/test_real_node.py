"""A real kubelet + containerd node beside the kwok nodes: pods really run there.

The probe image (a static program from hack/node-images) is pushed to a real registry and
pulled by containerd; its pod logs, answers `kubectl exec`, serves on its pod IP and through a
ClusterIP Service (kube-proxy), and reaches the apiserver through the `kubernetes` Service.
The session fixture checks at teardown that every host change was undone.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaito.devcluster import ApiClient, ControlPlane
from kaito.devcluster.binaries import bin_dir
from kaito.devcluster.realnode import (
    CGROUP_ROOT,
    NODE_IP,
    NODE_LABEL,
    NODE_NETWORK,
    TOLERATION,
    RealNode,
    image_parts,
)
from tests.conftest_cluster import Kubectl
from tests.support.registry import LocalRegistry, oci_registry, push_image

pytestmark = [pytest.mark.slow]
__all__ = ["oci_registry"]  # the registry fixture this module uses

JSON = dict[str, Any]
# Cold: the image is pulled over loopback and a sandbox created; warm runs take a few seconds.
POD_READY_S = 90


@pytest.fixture(scope="module")
def probe_image(oci_registry: LocalRegistry, real_node: RealNode) -> str:
    config, layer = image_parts({"/probe": bin_dir() / "probe"}, ["/probe"])
    real_node.trust_registry(oci_registry.host)
    return push_image(oci_registry, "kaito/probe", "1", config, [layer])


def probe_pod(name: str, image: str) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {NODE_LABEL: "true"},
            "tolerations": [TOLERATION],
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "args": ["serve", ":8080"],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/", "port": 8080},
                        "periodSeconds": 1,
                    },
                }
            ],
        },
    }


def service(name: str, app: str) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def ready(pod: JSON) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def ready_pod(api: ApiClient, path: str) -> Callable[[], JSON | None]:
    def probe() -> JSON | None:
        pod = api.get(path)
        return pod if ready(pod) else None

    return probe


def get_text(url: str) -> str:
    # No proxies: these addresses exist only on this machine.
    with httpx.Client(trust_env=False, timeout=5) as client:
        response = client.get(url)
        response.raise_for_status()
        return response.text


def eventually(probe: Callable[[], str], api: ApiClient, what: str, timeout_s: float) -> str:
    answer: list[str] = []

    def attempt() -> bool:
        try:
            answer.append(probe())
        except httpx.HTTPError:
            return False
        return True

    api.wait_for(attempt, timeout_s=timeout_s, interval_s=0.5, what=what)
    return answer[-1]


@pytest.fixture
def probe(api: ApiClient, namespace: str, kubectl: Kubectl, probe_image: str) -> Iterator[JSON]:
    name = "probe"
    started = time.monotonic()
    kubectl("apply", "-f", "-", input=json.dumps(probe_pod(name, probe_image)))
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    try:
        pod = api.wait_for(
            ready_pod(api, path),
            timeout_s=POD_READY_S,
            what="the probe pod to be Ready on the real node",
        )
    except TimeoutError:
        events = kubectl("get", "events", "-o", "custom-columns=R:.reason,M:.message").stdout
        raise AssertionError(f"{api.get(path).get('status')}\n{events}") from None
    print(f"probe pod Ready in {time.monotonic() - started:.1f} s")
    yield pod
    kubectl("delete", "pod", name, "--wait=true", "--timeout=60s")


def test_the_real_node_is_ready_beside_kwok_nodes_and_only_takes_pods_meant_for_it(
    real_node: RealNode,
    control_plane: ControlPlane,
    fake_nodes: Callable[..., JSON],
) -> None:
    fake_nodes(gpus=1)
    listing = json.loads(control_plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    by_name = {n["metadata"]["name"]: n for n in listing}
    node = by_name[real_node.name]
    assert node["metadata"]["labels"][NODE_LABEL] == "true"
    assert {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE_IP
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
    # kwok nodes carry kwok's annotation; the real node reports a real kubelet and runtime.
    assert any("kwok.x-k8s.io/node" in n["metadata"].get("annotations", {}) for n in listing)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"].startswith("v1.")
    assert info["containerRuntimeVersion"].startswith("containerd://")
    print(f"real node Ready {real_node.startup_s:.1f} s after its processes started")


def test_a_pod_on_the_real_node_logs_execs_serves_and_reaches_the_apiserver(
    api: ApiClient, namespace: str, kubectl: Kubectl, probe: JSON, real_node: RealNode
) -> None:
    assert probe["spec"]["nodeName"] == real_node.name
    pod_ip = probe["status"]["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(NODE_NETWORK)
    assert pod_ip != NODE_IP

    logs = kubectl("logs", "probe").stdout
    assert "listening on [::]:8080" in logs, logs
    assert kubectl("exec", "probe", "--", "/probe", "echo", "from", "exec").stdout == "from exec\n"

    assert get_text(f"http://{pod_ip}:8080/") == "probe probe\n"

    kubectl("apply", "-f", "-", input=json.dumps(service("probe-svc", app="probe")))
    path = f"/api/v1/namespaces/{namespace}/services/probe-svc"
    cluster_ip = api.get(path)["spec"]["clusterIP"]
    started = time.monotonic()
    answer = eventually(
        lambda: get_text(f"http://{cluster_ip}/"), api, "the ClusterIP Service", timeout_s=30
    )
    assert answer == "probe probe\n"
    print(f"ClusterIP answered {time.monotonic() - started:.1f} s after the Service was created")

    # The cluster DNS answers Service names (what in-cluster clients such as kopf use) and
    # nothing outside the cluster.
    resolve = f"http://{pod_ip}:8080/resolve?name="
    assert get_text(f"{resolve}kubernetes.default.svc") == "10.0.0.1"
    assert get_text(f"{resolve}probe-svc.{namespace}.svc.cluster.local") == cluster_ip
    assert get_text(f"{resolve}probe-svc") == cluster_ip  # the pod's namespace is searched
    with pytest.raises(httpx.HTTPStatusError):
        get_text(f"{resolve}example.com")

    # The pod calls https://$KUBERNETES_SERVICE_HOST (the `kubernetes` Service) with its token.
    status, _, body = get_text(f"http://{pod_ip}:8080/apiserver").partition(" ")
    assert status == "200", body
    assert json.loads(body)["gitVersion"].startswith("v1.")


def pod_processes(uid: str) -> list[int]:
    """Processes in the pod's cgroup (the kubelet names it pod<uid> under the node's root)."""
    pids = Path("/sys/fs/cgroup/pids") / CGROUP_ROOT.lstrip("/")
    return [
        int(pid)
        for procs in pids.glob(f"**/pod{uid}/**/cgroup.procs")
        for pid in procs.read_text().split()
    ]


def test_deleting_a_pod_stops_its_containers(
    api: ApiClient, namespace: str, kubectl: Kubectl, probe_image: str, real_node: RealNode
) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(probe_pod("short-lived", probe_image)))
    path = f"/api/v1/namespaces/{namespace}/pods/short-lived"
    pod = api.wait_for(ready_pod(api, path), timeout_s=POD_READY_S, what="the pod")
    uid = pod["metadata"]["uid"]
    assert len(pod_processes(uid)) >= 2  # the sandbox's pause and the probe
    kubectl("delete", "pod", "short-lived", "--wait=true", "--timeout=60s")
    api.wait_for(
        lambda: not pod_processes(uid), timeout_s=30, what="the pod's processes to be gone"
    )
