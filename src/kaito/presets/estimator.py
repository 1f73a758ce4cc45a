"""GPU-memory estimator: how many nodes of a SKU a preset needs, and whether it fits at all."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from kaito.api.workspace import ANNOTATION_BYPASS_RESOURCE_CHECKS, Workspace
from kaito.presets.catalog import GIB, Preset, Runtime
from kaito.presets.skus import Sku

# Upstream's controller constants (pkg/utils/resources): the compatibility baseline.
GPU_MEMORY_UTILIZATION = 0.84
WEIGHT_LOAD_FACTOR = 1.02  # loaded weights are ~2% larger than the safetensors files
RESERVE_PER_GPU_GIB = 2.3  # non-PyTorch memory (<=0.6) + activations (<=1.7)
OVERHEAD_FACTOR = 1.05
DEFAULT_MAX_MODEL_LEN = 2048
# Multi-node vLLM needs a Ray (or torch.distributed) cluster spanning the pods; the runtime
# starts none, so a placement that needs more than one node is refused rather than left to
# crash-loop (docs/inference.md, "One node per vLLM workspace").
SINGLE_NODE_ONLY = "kaito runs vLLM on a single node (no multi-node runtime ships)"


@dataclass(frozen=True)
class NodeEstimate:
    """The estimator's answer, with the intermediate numbers so messages can explain it."""

    nodes: int
    min_gpus: int
    gpus_per_node: int
    max_model_len: int
    available_per_gpu_gib: float
    reserve_per_gpu_gib: float
    usable_per_gpu_gib: float
    loaded_weights_gib: float
    fits: bool
    reason: str = ""


def kv_cache_gib(preset: Preset, tokens: int) -> float:
    """KV cache for `tokens` tokens, in GiB (fp16, as upstream assumes)."""
    return tokens * preset.bytes_per_token / GIB


def estimate_nodes(
    preset: Preset,
    sku: Sku,
    *,
    max_model_len: int | None = None,
    requested_count: int = 1,
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION,
) -> NodeEstimate:
    """Nodes of `sku` needed to serve `preset` with vLLM (upstream's node estimator, §7.1).

    avail = per-GPU memory x util; reserve = 2.3 GiB + KV(max_model_len) / GPUs;
    usable = (avail - reserve) / 1.05; minGPUs = floor(1.02 W / usable) + 1;
    nodes = ceil(minGPUs / GPUs per node). An unknown SKU (no memory data) keeps the
    requested count, as upstream does. Only a one-node answer fits: vLLM runs on one node.
    """
    tokens = max_model_len or DEFAULT_MAX_MODEL_LEN
    loaded = preset.weights_gib * WEIGHT_LOAD_FACTOR
    gpus = max(sku.gpus, 1)
    if not sku.known or sku.gpu_memory_gib <= 0:
        nodes = max(requested_count, 1)
        return NodeEstimate(
            nodes=nodes,
            min_gpus=gpus * nodes,
            gpus_per_node=gpus,
            max_model_len=tokens,
            available_per_gpu_gib=0.0,
            reserve_per_gpu_gib=0.0,
            usable_per_gpu_gib=0.0,
            loaded_weights_gib=loaded,
            fits=nodes == 1,
            reason=(
                f"no GPU data for instance type {sku.name}; using the requested node count"
                if nodes == 1
                else f"{nodes} nodes of {sku.name} requested, but {SINGLE_NODE_ONLY}: set "
                "resource.count to 1"
            ),
        )
    available = sku.gpu_memory_per_gpu_gib * gpu_memory_utilization
    reserve = RESERVE_PER_GPU_GIB + kv_cache_gib(preset, tokens) / gpus
    if available <= reserve:
        return NodeEstimate(
            nodes=0,
            min_gpus=0,
            gpus_per_node=gpus,
            max_model_len=tokens,
            available_per_gpu_gib=available,
            reserve_per_gpu_gib=reserve,
            usable_per_gpu_gib=0.0,
            loaded_weights_gib=loaded,
            fits=False,
            reason=(
                f"each GPU of {sku.name} has {available:.1f} GiB usable, less than the "
                f"{reserve:.1f} GiB needed for runtime overhead and the KV cache of "
                f"{tokens} tokens; lower max-model-len or choose a larger GPU"
            ),
        )
    usable = (available - reserve) / OVERHEAD_FACTOR
    min_gpus = math.floor(loaded / usable) + 1
    nodes = math.ceil(min_gpus / gpus)
    fits = nodes == 1
    reason = ""
    if not fits:
        why = SINGLE_NODE_ONLY if preset.distributed else "it does not support multi-node inference"
        reason = (
            f"{preset.name} needs {min_gpus} GPUs ({nodes} nodes of {sku.name}), but {why}; "
            "choose an instance type that holds it on one node"
        )
    return NodeEstimate(
        nodes=nodes,
        min_gpus=min_gpus,
        gpus_per_node=gpus,
        max_model_len=tokens,
        available_per_gpu_gib=available,
        reserve_per_gpu_gib=reserve,
        usable_per_gpu_gib=usable,
        loaded_weights_gib=loaded,
        fits=fits,
        reason=reason,
    )


def has_enough_total_memory(preset: Preset, sku: Sku, count: int) -> bool:
    """Upstream's admission check: count x instance GPU memory >= weights (unknown SKU: True)."""
    if not sku.known or sku.gpu_memory_gib <= 0:
        return True
    return count * sku.gpu_memory_gib >= preset.weights_gib


def bypass_resource_checks(annotations: Mapping[str, str] | None) -> bool:
    """The annotation's presence alone (any value) skips GPU-memory admission checks."""
    return ANNOTATION_BYPASS_RESOURCE_CHECKS in (annotations or {})


def target_node_count(
    workspace: Workspace,
    preset: Preset | None,
    sku: Sku,
    runtime: Runtime,
    *,
    max_model_len: int | None = None,
) -> int:
    """How many nodes the workspace needs (upstream §7 step 5), at least 1.

    Tuning -> 1; custom template or transformers -> resource.count; vLLM -> the estimator.
    """
    if workspace.is_tuning:
        return 1
    if preset is None or runtime != "vllm":
        return workspace.node_count
    estimate = estimate_nodes(
        preset, sku, max_model_len=max_model_len, requested_count=workspace.node_count
    )
    return max(estimate.nodes, 1)


def tuning_gpu_count(sku: Sku) -> int:
    """GPUs per tuning pod: the SKU's count, or 1 for an unknown SKU (v0.3.0 behaviour)."""
    return sku.gpus if sku.known and sku.gpus > 0 else 1


# Rough per-GPU training footprint, used only for warnings (never to reject: see upstream §1.5).
TUNING_ACTIVATION_FACTOR = 2  # activations kept for backward ~ 2x the fp16 KV bytes per token
LORA_STATE_FRACTION = 0.02  # adapter weights + gradients + Adam states, relative to the base
QLORA_WEIGHT_FRACTION = 0.25 * 1.1  # 4-bit base weights plus quantization constants


def estimate_tuning_memory_gib(preset: Preset, method: str, *, max_seq_len: int = 2048) -> float:
    """Approximate GPU memory (GiB, per GPU) to fine-tune `preset` with LoRA or QLoRA.

    base weights (bf16, or 4-bit for qlora) + adapter/optimizer state + runtime reserve
    + activations for one sequence of `max_seq_len` tokens. Data-parallel tuning keeps a full
    copy per GPU, so more GPUs do not lower this number.
    """
    fraction = QLORA_WEIGHT_FRACTION if method.lower() == "qlora" else 1.0
    weights = preset.weights_gib * fraction
    state = preset.weights_gib * LORA_STATE_FRACTION
    activations = TUNING_ACTIVATION_FACTOR * kv_cache_gib(preset, max_seq_len)
    return weights + state + RESERVE_PER_GPU_GIB + activations
