"""Fake GPU nodes: Node objects that kwok keeps Ready and the real scheduler places pods on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kaito.devcluster.client import JSON, ApiClient
from kaito.devcluster.controlplane import KWOK_NODE_ANNOTATION

GPU_RESOURCE = "nvidia.com/gpu"
# Azure's NC A100 v4 size, one GPU per 24 vCPUs; KAITO's default SKU tables use it.
DEFAULT_GPU_INSTANCE_TYPE = "Standard_NC24ads_A100_v4"
DEFAULT_CPU_INSTANCE_TYPE = "Standard_D16s_v5"


def fake_node(
    name: str,
    *,
    gpus: int = 0,
    instance_type: str | None = None,
    gpu_product: str = "NVIDIA-A100-PCIE-80GB",
    gpu_memory_mib: int = 81920,
    cpu: str = "24",
    memory: str = "220Gi",
    pods: int = 110,
    region: str = "eastus",
    zone: str = "eastus-1",
    arch: str = "amd64",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    taints: Sequence[Mapping[str, str]] = (),
) -> JSON:
    """A kwok-managed Node manifest with cloud-provider labels and, if `gpus`, GPU capacity.

    The status is part of the manifest on purpose: a Node's status is kept on create (that is how
    a kubelet registers), and kwok's node-initialize stage preserves the given capacity.
    """
    resources = {
        "cpu": cpu,
        "memory": memory,
        "pods": str(pods),
        "ephemeral-storage": "1Ti",
    }
    gpu_labels: dict[str, str] = {}
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
        # What NVIDIA's GPU feature discovery would label a real GPU node with.
        gpu_labels = {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": gpu_product,
            "nvidia.com/gpu.count": str(gpus),
            "nvidia.com/gpu.memory": str(gpu_memory_mib),
        }
    if instance_type is None:
        instance_type = DEFAULT_GPU_INSTANCE_TYPE if gpus else DEFAULT_CPU_INSTANCE_TYPE
    key, value = KWOK_NODE_ANNOTATION
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "node.kubernetes.io/instance-type": instance_type,
        "beta.kubernetes.io/instance-type": instance_type,
        "topology.kubernetes.io/region": region,
        "topology.kubernetes.io/zone": zone,
        **gpu_labels,
        "type": "kwok",
        **(labels or {}),
    }
    node: JSON = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": node_labels,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0", **(annotations or {})},
        },
        "spec": {},
        "status": {
            "capacity": resources,
            "allocatable": dict(resources),
            "nodeInfo": {"architecture": arch, "operatingSystem": "linux"},
        },
    }
    if taints:
        node["spec"]["taints"] = [dict(t) for t in taints]
    return node


def fake_gpu_node(name: str, *, gpus: int = 1, **options: Any) -> JSON:
    """`fake_node` with `gpus` x `nvidia.com/gpu` (one by default)."""
    return fake_node(name, gpus=gpus, **options)


def node_is_ready(node: Mapping[str, Any]) -> bool:
    """True when the Ready condition is True and the not-ready taint has been lifted."""
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    # The controller-manager removes the not-ready taint a moment after Ready turns True; until
    # then the scheduler still refuses the node.
    taints = (node.get("spec") or {}).get("taints") or []
    not_ready = any(t.get("key") == "node.kubernetes.io/not-ready" for t in taints)
    return ready and not not_ready


def add_fake_node(
    client: ApiClient, name: str, *, wait: bool = True, timeout_s: float = 60.0, **options: Any
) -> JSON:
    """Create (or update) a fake node and, by default, wait until pods can be scheduled on it.

    `options` are the keyword arguments of `fake_node` (`gpus=0` makes a CPU-only node).
    """
    manifest = fake_node(name, **options)
    path = f"/api/v1/nodes/{name}"
    if client.exists(path):
        client.apply(manifest)
    else:
        client.create(manifest)
    if not wait:
        return client.get(path)
    return client.wait_for(
        lambda: node if node_is_ready(node := client.get(path)) else None,
        timeout_s=timeout_s,
        what=f"node {name} to become Ready",
    )


def add_fake_gpu_node(client: ApiClient, name: str, *, gpus: int = 1, **options: Any) -> JSON:
    """`add_fake_node` with `gpus` x `nvidia.com/gpu` (one by default)."""
    return add_fake_node(client, name, gpus=gpus, **options)


def delete_node(client: ApiClient, name: str) -> None:
    client.delete({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
