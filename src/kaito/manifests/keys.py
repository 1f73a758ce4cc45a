"""Label, annotation, finalizer and name constants shared by the builders and the planner."""

from __future__ import annotations

# Written on children and NodeClaims (upstream §4.2).
LABEL_WORKSPACE = "kaito.sh/workspace"
LABEL_WORKSPACE_NAMESPACE = "kaito.sh/workspacenamespace"
LABEL_NODEPOOL = "karpenter.sh/nodepool"
NODEPOOL_KAITO = "kaito"
LABEL_INSTANCE_TYPE = "node.kubernetes.io/instance-type"
LABEL_OS = "kubernetes.io/os"
LABEL_AZURE_SKU = "karpenter.azure.com/sku-name"
LABEL_AWS_GPU_COUNT = "karpenter.k8s.aws/instance-gpu-count"
LABEL_MACHINE_TYPE = "kaito.sh/machine-type"
LABEL_ACCELERATOR = "accelerator"
LABEL_GPU_COUNT = "nvidia.com/gpu.count"
LABEL_POD_NAME = "statefulset.kubernetes.io/pod-name"

ANNOTATION_HASH = "workspace.kaito.io/hash"
ANNOTATION_REVISION = "workspace.kaito.io/revision"
# Hash of the desired manifest as last applied: equal hashes mean "no write needed".
ANNOTATION_APPLIED = "kaito.sh/applied-hash"
ANNOTATION_DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
ANNOTATION_NODE_IMAGE_FAMILY = "kaito.sh/node-image-family"
# On a Workspace: "true" skips the tuning dataset preflight.
ANNOTATION_SKIP_PREFLIGHT = "kaito.sh/skip-preflight"
# On tuning pods: which stage the pod runs ("preflight"; the trainer's pods have none).
LABEL_TUNING_STAGE = "kaito.sh/tuning-stage"

FINALIZER = "workspace.finalizer.kaito.sh"
FIELD_MANAGER = "kaito-workspace-controller"

GPU_RESOURCE = "nvidia.com/gpu"
HTTP_PORT = 5000
SERVICE_PORT = 80

# Reserved keys that never reach node selectors or NodeClaim labels (upstream §3.1).
RESERVED_LABEL_KEYS = frozenset(
    {
        "kaito.sh/workspace",
        "kaito.sh/workspacenamespace",
        "kaito.sh/ragengine",
        "kaito.sh/ragenginenamespace",
        "karpenter.kaito.sh/workspace-name",
        "karpenter.kaito.sh/workspace-namespace",
        "karpenter.kaito.sh/inferenceset",
        "karpenter.kaito.sh/inferenceset-namespace",
    }
)
