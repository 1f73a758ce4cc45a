"""A real Kubernetes control plane on 127.0.0.1 for tests and developers."""

from kaito.devcluster.binaries import (
    Binaries,
    BinariesMissingError,
    bin_dir,
    find_binaries,
    kaito_home,
    kubectl_path,
)
from kaito.devcluster.client import ApiClient, ApiError
from kaito.devcluster.controlplane import ControlPlane, ControlPlaneError, read_state
from kaito.devcluster.karpenter import (
    install_crd,
    install_nodeclaim_crd,
    nodeclaim_crd,
    nodeclaim_crd_text,
)
from kaito.devcluster.nodes import (
    GPU_RESOURCE,
    add_fake_gpu_node,
    add_fake_node,
    delete_node,
    fake_gpu_node,
    fake_node,
    node_is_ready,
)

__all__ = [
    "GPU_RESOURCE",
    "ApiClient",
    "ApiError",
    "Binaries",
    "BinariesMissingError",
    "ControlPlane",
    "ControlPlaneError",
    "add_fake_gpu_node",
    "add_fake_node",
    "bin_dir",
    "delete_node",
    "fake_gpu_node",
    "fake_node",
    "find_binaries",
    "install_crd",
    "install_nodeclaim_crd",
    "kaito_home",
    "kubectl_path",
    "node_is_ready",
    "nodeclaim_crd",
    "nodeclaim_crd_text",
    "read_state",
]
