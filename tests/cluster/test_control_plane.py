"""The dev control plane behaves like a real cluster: scheduling, controllers, GC, CRDs with CEL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.devcluster import GPU_RESOURCE, ApiClient, ControlPlane, install_crd
from kaito.devcluster.process import Process, group_alive

from .conftest import Kubectl

NodeFactory = Callable[..., dict[str, Any]]
# Budget for a pod to go from created to Ready on a kwok node (scheduler + kwok stage).
POD_TIMEOUT_S = 60


def deployment(name: str, *, gpus: int) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "server", "image": "example.invalid/server:1"}
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]},
            },
        },
    }


def pods_of(api: ApiClient, namespace: str, app: str) -> list[dict[str, Any]]:
    listing = api.request(
        "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": f"app={app}"}
    )
    items: list[dict[str, Any]] = listing["items"]
    return items


def scheduling_failures(api: ApiClient, namespace: str) -> list[str]:
    events = api.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/events",
        query={"fieldSelector": "reason=FailedScheduling"},
    )
    return [event.get("message", "") for event in events["items"]]


def test_the_cluster_is_ready_within_thirty_seconds(control_plane: ControlPlane) -> None:
    assert control_plane.startup_s is not None
    print(f"control plane ready in {control_plane.startup_s:.1f} s: {control_plane.startup_phases}")
    assert control_plane.startup_s < 30


def test_kubectl_reaches_the_apiserver_of_the_built_version(
    control_plane: ControlPlane, kubectl: Kubectl
) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    built = (control_plane.binaries.directory / "versions.env").read_text()
    assert f"K8S_VERSION={version['serverVersion']['gitVersion'].lstrip('v')}" in built
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_a_gpu_pod_waits_for_a_gpu_node_then_runs_on_it(
    api: ApiClient, namespace: str, fake_nodes: NodeFactory, kubectl: Kubectl
) -> None:
    fake_nodes(gpus=0)
    kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment("gpu-server", gpus=1)))

    failures = api.wait_for(
        lambda: [m for m in scheduling_failures(api, namespace) if "Insufficient" in m],
        timeout_s=POD_TIMEOUT_S,
        what="a FailedScheduling event",
    )
    assert f"Insufficient {GPU_RESOURCE}" in failures[0]
    (pod,) = pods_of(api, namespace, "gpu-server")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")

    gpu_node = fake_nodes(gpus=1)
    gpu_node_name = gpu_node["metadata"]["name"]
    kubectl("rollout", "status", "deployment/gpu-server", f"--timeout={POD_TIMEOUT_S}s")

    (pod,) = pods_of(api, namespace, "gpu-server")
    assert pod["spec"]["nodeName"] == gpu_node_name
    ready = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"
    status = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/gpu-server")["status"]
    assert status["readyReplicas"] == 1


def test_a_job_pod_runs_to_completion_and_the_job_succeeds(
    api: ApiClient, namespace: str, fake_nodes: NodeFactory, kubectl: Kubectl
) -> None:
    fake_nodes(gpus=0)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "tuning"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "train", "image": "example.invalid/train:1"}],
                }
            },
        },
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(job))
    kubectl("wait", "--for=condition=Complete", "job/tuning", f"--timeout={POD_TIMEOUT_S}s")

    status = api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/tuning")["status"]
    assert status["succeeded"] == 1
    pods = api.request(
        "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": "job-name=tuning"}
    )["items"]
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]


def test_deleting_an_owner_garbage_collects_its_dependents(api: ApiClient, namespace: str) -> None:
    owner = api.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "owner", "namespace": namespace},
        }
    )
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "dependent", "namespace": namespace, "ownerReferences": [reference]},
    }
    api.create(dependent)
    bystander = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "bystander", "namespace": namespace},
    }
    api.create(bystander)

    api.delete(owner)
    api.wait_for(
        lambda: not api.exists(f"/api/v1/namespaces/{namespace}/configmaps/dependent"),
        timeout_s=60,
        what="the garbage collector to delete the dependent",
    )
    assert api.exists(f"/api/v1/namespaces/{namespace}/configmaps/bystander")


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.kaito.sh"},
    "spec": {
        "group": "test.kaito.sh",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "size": {"type": "string"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minReplicas <= self.replicas",
                                        "message": "minReplicas must not exceed replicas",
                                    }
                                ],
                            }
                        },
                    }
                },
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "string", "jsonPath": ".spec.size"},
                    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                ],
            }
        ],
    },
}


def widget(name: str, *, replicas: int, min_replicas: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "test.kaito.sh/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "minReplicas": min_replicas, "size": "large"},
        }
    )


def test_a_crd_rejects_objects_that_break_its_cel_rule_and_prints_its_columns(
    api: ApiClient, kubectl: Kubectl
) -> None:
    install_crd(api, WIDGET_CRD)
    try:
        rejected = kubectl(
            "apply", "-f", "-", input=widget("bad", replicas=1, min_replicas=3), check=False
        )
        assert rejected.returncode != 0
        assert "minReplicas must not exceed replicas" in rejected.stderr

        kubectl("apply", "-f", "-", input=widget("good", replicas=3, min_replicas=1))
        table = kubectl("get", "widgets").stdout.splitlines()
        assert table[0].split() == ["NAME", "SIZE", "REPLICAS"]
        assert table[1].split() == ["good", "large", "3"]
    finally:
        api.delete(WIDGET_CRD)


def test_the_karpenter_nodeclaim_crd_is_served(
    nodeclaim_crd: dict[str, Any], api: ApiClient
) -> None:
    assert nodeclaim_crd["spec"]["group"] == "karpenter.sh"
    versions = api.get("/apis/karpenter.sh/v1")["resources"]
    assert "nodeclaims" in [r["name"] for r in versions]


def test_a_stopped_process_leaves_nothing_in_its_process_group(tmp_path: Path) -> None:
    # The shell forks a grandchild, as a component's helper process would.
    process = Process("sleeper", ["sh", "-c", "sleep 300 & sleep 300"], tmp_path / "log")
    time.sleep(0.2)
    process.stop(grace_s=2)
    assert not group_alive(process.pid)


def test_children_die_with_a_killed_harness(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from kaito.devcluster.process import Process
        p = Process("sleeper", ["sleep", "300"], Path({str(tmp_path / "log")!r}))
        print(p.pid, flush=True)
        time.sleep(300)
        """
    )
    harness = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert harness.stdout is not None
    child = int(harness.stdout.readline())
    assert group_alive(child)
    # SIGKILL skips atexit and signal handlers: only the kernel's parent-death signal helps.
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    deadline = time.monotonic() + 5
    while group_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(child)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_an_interrupted_harness_stops_its_children_gracefully(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # The child records a SIGTERM; the parent-death fallback would SIGKILL it silently instead.
    marker = tmp_path / "stopped-gracefully"
    trapped = tmp_path / "trap-installed"
    child_command = f'trap "touch {marker}; exit 0" TERM; touch {trapped}; sleep 300 & wait'
    script = textwrap.dedent(
        f"""
        import signal
        import time
        from pathlib import Path
        from kaito.devcluster.process import Process
        # A shell's background job starts with SIGINT ignored, and Python keeps that: restore
        # what an interactive harness has, so the test does not depend on how it was launched.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        p = Process("sleeper", ["sh", "-c", {child_command!r}], Path({str(tmp_path / "log")!r}))
        print(p.pid, flush=True)
        time.sleep(300)
        """
    )
    harness = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert harness.stdout is not None
    child = int(harness.stdout.readline())
    deadline = time.monotonic() + 10
    while not trapped.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    harness.send_signal(sig)
    harness.wait(timeout=15)
    assert marker.exists()
    assert not group_alive(child)


def test_a_fake_gpu_node_advertises_its_gpus_and_cloud_labels(
    fake_nodes: NodeFactory, kubectl: Kubectl
) -> None:
    node = fake_nodes(gpus=4, instance_type="Standard_NC96ads_A100_v4")
    name = node["metadata"]["name"]
    shown = json.loads(kubectl("get", "node", name, "-o", "json").stdout)
    assert shown["status"]["allocatable"][GPU_RESOURCE] == "4"
    labels = shown["metadata"]["labels"]
    assert labels["node.kubernetes.io/instance-type"] == "Standard_NC96ads_A100_v4"
    assert labels["kubernetes.io/hostname"] == name
    assert (labels["kubernetes.io/os"], labels["kubernetes.io/arch"]) == ("linux", "amd64")
    assert labels["nvidia.com/gpu.present"] == "true"
