"""karpenter.sh/v1 NodeClaims for a Workspace, named deterministically so restarts are safe."""

from __future__ import annotations

import hashlib

from kaito.api.workspace import ANNOTATION_NODE_IMAGE_FAMILY as WS_IMAGE_FAMILY
from kaito.manifests.common import JSON, stamp
from kaito.manifests.context import WorkspaceContext
from kaito.manifests.keys import (
    ANNOTATION_DO_NOT_DISRUPT,
    ANNOTATION_NODE_IMAGE_FAMILY,
    LABEL_AWS_GPU_COUNT,
    LABEL_AZURE_SKU,
    LABEL_INSTANCE_TYPE,
    LABEL_NODEPOOL,
    LABEL_OS,
    LABEL_WORKSPACE,
    LABEL_WORKSPACE_NAMESPACE,
    NODEPOOL_KAITO,
)

NODECLAIM_API_VERSION = "karpenter.sh/v1"
SKU_TAINT = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}


def nodeclaim_name(namespace: str, name: str, index: int) -> str:
    """`ws` + 9 hex of sha256(namespace/name/index): upstream's shape, but reproducible.

    Upstream hashes a timestamp, so a restart between create and observe duplicates claims;
    hashing the index instead makes "create NodeClaim #i" idempotent. The 11 lowercase
    alphanumerics satisfy the AKS agent-pool rule ^[a-z][a-z0-9]{0,11}$.
    """
    digest = hashlib.sha256(f"{namespace}/{name}/{index}".encode()).hexdigest()
    return f"ws{digest[:9]}"


def nodeclaim_storage(ctx: WorkspaceContext) -> str:
    """OS disk: the preset's inference disk; 1024Gi for tuning and custom templates."""
    if ctx.preset is None or ctx.workspace.is_tuning:
        return ctx.options.tuning_storage
    return ctx.preset.disk_size


def image_family(ctx: WorkspaceContext) -> str:
    requested = ctx.workspace.annotations.get(WS_IMAGE_FAMILY, "").strip().lower()
    return requested or ctx.options.default_node_image_family


def node_class_ref(ctx: WorkspaceContext) -> JSON:
    if ctx.options.cloud_provider == "aws":
        return {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}
    return {"group": "kaito.sh", "kind": "KaitoNodeClass", "name": ctx.options.node_class_name}


def build_nodeclaim(ctx: WorkspaceContext, index: int) -> JSON:
    """NodeClaim #index of the workspace (upstream §8.2), cluster-scoped."""
    instance_type = ctx.workspace.instance_type
    requirements: list[JSON] = [
        {"key": LABEL_NODEPOOL, "operator": "In", "values": [NODEPOOL_KAITO]},
        {"key": LABEL_INSTANCE_TYPE, "operator": "In", "values": [instance_type]},
        {"key": LABEL_OS, "operator": "In", "values": ["linux"]},
    ]
    if ctx.options.cloud_provider == "azure":
        requirements.append({"key": LABEL_AZURE_SKU, "operator": "In", "values": [instance_type]})
    elif ctx.options.cloud_provider == "aws":
        requirements.append({"key": LABEL_AWS_GPU_COUNT, "operator": "Gt", "values": ["0"]})
    labels = {
        LABEL_NODEPOOL: NODEPOOL_KAITO,
        LABEL_WORKSPACE: ctx.name,
        LABEL_WORKSPACE_NAMESPACE: ctx.namespace,
        **ctx.match_labels,
    }
    claim: JSON = {
        "apiVersion": NODECLAIM_API_VERSION,
        "kind": "NodeClaim",
        "metadata": {
            "name": nodeclaim_name(ctx.namespace, ctx.name, index),
            "labels": labels,
            "annotations": {
                ANNOTATION_DO_NOT_DISRUPT: "true",
                ANNOTATION_NODE_IMAGE_FAMILY: image_family(ctx),
            },
        },
        "spec": {
            "nodeClassRef": node_class_ref(ctx),
            "taints": [dict(SKU_TAINT)],
            "requirements": requirements,
            "resources": {"requests": {"storage": nodeclaim_storage(ctx)}},
        },
    }
    return stamp(claim)
