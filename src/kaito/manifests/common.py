"""Pieces every workload shares: owner references, tolerations, affinity, manifest hashes."""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping
from typing import Any

from kaito.api.workspace import Workspace
from kaito.contract.files import PLAIN_HTTP_REGISTRIES_ENV
from kaito.manifests.context import WorkspaceContext, canonical_json
from kaito.manifests.keys import ANNOTATION_APPLIED, GPU_RESOURCE, LABEL_WORKSPACE
from kaito.manifests.options import ClusterOptions

JSON = dict[str, Any]


# The user of the runtime image (docker/runtime.Dockerfile); every kaito-built pod runs it.
RUNTIME_UID = 10001


def harden_pod_spec(spec: JSON) -> JSON:
    """Pod security for the pods kaito builds: non-root, no privilege escalation, no Linux
    capabilities, RuntimeDefault seccomp and no automatic API token (only the tuning trainer
    calls the API, to annotate its own pod, with a token mounted into that container alone).

    GPUs need none of what is taken away: the NVIDIA device plugin hands the container its
    /dev/nvidia* devices, usable by any user. The root filesystem stays writable because the
    engines (vLLM/Triton kernels, torch.compile, Hugging Face) write caches under $HOME and /tmp.
    """
    spec["automountServiceAccountToken"] = False
    spec["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        # Large weight and result volumes are not re-chowned on every start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
    return spec


def owner_reference(workspace: Workspace) -> JSON:
    """A controller reference to the Workspace, so Kubernetes GC removes the child with it."""
    return {
        "apiVersion": workspace.api_version,
        "kind": "Workspace",
        "name": workspace.name,
        "uid": workspace.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def workspace_labels(workspace: Workspace) -> dict[str, str]:
    return {LABEL_WORKSPACE: workspace.name}


def child_metadata(
    ctx: WorkspaceContext, name: str, *, annotations: Mapping[str, str] | None = None
) -> JSON:
    meta: JSON = {
        "name": name,
        "namespace": ctx.namespace,
        "labels": workspace_labels(ctx.workspace),
        "ownerReferences": [owner_reference(ctx.workspace)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def tolerations(cloud_provider: str) -> list[JSON]:
    """GPU and `sku=gpu` taints (NodeClaims carry the latter), plus Azure spot nodes."""
    out: list[JSON] = [
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    ]
    if cloud_provider == "azure":
        out.append(
            {
                "key": "kubernetes.azure.com/scalesetpriority",
                "operator": "Equal",
                "value": "spot",
                "effect": "NoSchedule",
            }
        )
    return out


def workload_tolerations(options: ClusterOptions) -> list[JSON]:
    """The built-in tolerations, then the operator's `workload_tolerations` (platform teams
    taint dedicated nodes; this lets kaito's pods on)."""
    return [
        *tolerations(options.cloud_provider),
        *copy.deepcopy(list(options.workload_tolerations)),
    ]


# Small on purpose: the CPU presets are tiny, and an inference pod, a tuning pod and a
# preflight must fit one 2-core node next to the system pods. No CPU limit: llama.cpp and
# the trainer use whatever CPU is idle.
CPU_REQUEST = "250m"
MIB = 1024


def cpu_resources(ctx: WorkspaceContext, *, tuning: bool = False) -> JSON:
    """Requests for a workload placed on CPU: a quarter core, memory from the preset size."""
    preset = ctx.preset
    assert preset is not None
    weights_mib = preset.weights_gib * MIB
    if tuning:
        hint_mib = (preset.tuning.memory_hint_gib if preset.tuning else 0) * MIB
        need = max(hint_mib, 4 * weights_mib) + 512
    else:
        need = 2 * weights_mib + 512
    memory = int(math.ceil(need / 64) * 64)
    return {"requests": {"cpu": CPU_REQUEST, "memory": f"{memory}Mi"}}


def accelerator_resources(ctx: WorkspaceContext, *, tuning: bool = False) -> JSON:
    """nvidia.com/gpu per node, or CPU and memory requests when the workload runs on CPU."""
    if ctx.on_cpu:
        return cpu_resources(ctx, tuning=tuning)
    gpus = {GPU_RESOURCE: str(ctx.gpus_per_node)}
    return {"requests": dict(gpus), "limits": dict(gpus)}


def with_runtime_env(spec: JSON, options: ClusterOptions) -> JSON:
    """`spec` with the operator's plain-HTTP registry list in every runtime-image container
    (weights and adapter pullers, tuner, pusher, inference server: all use its OCI client)."""
    if not options.plain_http_registries:
        return spec
    out = copy.deepcopy(spec)
    value = ",".join(options.plain_http_registries)
    for container in [*out.get("initContainers", []), *out.get("containers", [])]:
        if container.get("image") != options.runtime_image:
            continue
        env = [e for e in container.get("env", []) if e.get("name") != PLAIN_HTTP_REGISTRIES_ENV]
        container["env"] = [*env, {"name": PLAIN_HTTP_REGISTRIES_ENV, "value": value}]
    return out


def node_affinity(labels: Mapping[str, str]) -> JSON | None:
    """Required node affinity: one `key In [value]` per selector label; None without labels."""
    if not labels:
        return None
    expressions = [
        {"key": key, "operator": "In", "values": [value]} for key, value in sorted(labels.items())
    ]
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def manifest_hash(obj: Mapping[str, Any]) -> str:
    """Hash of a desired manifest, ignoring the hash annotation itself."""
    body = copy.deepcopy(dict(obj))
    body.get("metadata", {}).get("annotations", {}).pop(ANNOTATION_APPLIED, None)
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]


def stamp(obj: JSON) -> JSON:
    """Record the manifest's hash on it, so the planner can skip unchanged writes."""
    digest = manifest_hash(obj)
    obj.setdefault("metadata", {}).setdefault("annotations", {})[ANNOTATION_APPLIED] = digest
    return obj


def applied_hash(obj: Mapping[str, Any] | None) -> str | None:
    if not obj:
        return None
    annotations = obj.get("metadata", {}).get("annotations") or {}
    value = annotations.get(ANNOTATION_APPLIED)
    return str(value) if value is not None else None
