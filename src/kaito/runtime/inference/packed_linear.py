"""Linear layers with oneDNN-prepacked weights, for batched fp32 decoding on CPU.

Why: a decode step multiplies a handful of rows (one per running sequence) by every weight
matrix. For those shapes MKL's generic GEMM on an AVX2 CPU costs ~4x a single row at 8 rows,
while oneDNN with weights reordered once into its blocked layout costs ~2x, and the vocabulary
projection (the largest matrix) ~3x less than MKL (measured in docs/inference.md). The numbers
are the same fp32 math in a different summation order; greedy answers were unchanged on
SmolLM2.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


class PackedLinear(torch.nn.Linear):  # type: ignore[misc]  # torch is untyped under our mypy config
    """`nn.Linear` whose forward runs on a oneDNN-packed copy of its weight.

    Stays an `nn.Linear` so peft can still wrap it with LoRA layers, and keeps a `weight` of the
    right shape and dtype for adapter validation, even when the dense values were released.
    """

    packed_weight: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                "packed linear layers only serve inference (oneDNN's packed op has no backward); "
                "load the model without weight packing to train it"
            )
        rows = x.reshape(-1, x.shape[-1])
        if not rows.is_contiguous():
            rows = rows.contiguous()
        linear = torch.ops.mkldnn._linear_pointwise
        out = linear(rows, self.packed_weight, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedLinear:
        # oneDNN's opaque tensors cannot be copied; they are never written after packing, so
        # copies share them. A released weight stays a placeholder instead of being materialized.
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        memo[id(self.packed_weight)] = self.packed_weight
        if _is_placeholder(self.weight):
            memo[id(self.weight)] = _placeholder(self.weight)
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone


def _placeholder(weight: torch.Tensor) -> torch.nn.Parameter:
    """Right shape and dtype, no memory: what peft and adapter checks read of a weight."""
    empty = torch.empty((), dtype=weight.dtype).expand(weight.shape)
    return torch.nn.Parameter(empty, requires_grad=False)


def _is_placeholder(weight: torch.Tensor) -> bool:
    return weight.dim() > 0 and all(step == 0 for step in weight.stride())


def can_pack(model: Any) -> bool:
    """Packing applies to fp32 models on CPU where PyTorch was built with oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return False
    parameter = next(iter(model.parameters()), None)
    return (
        parameter is not None
        and parameter.device.type == "cpu"
        and parameter.dtype == torch.float32
    )


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Turn every plain `nn.Linear` of `model` into a `PackedLinear`; returns how many.

    Dense weights that no other module shares are replaced by a zero-stride placeholder of the
    same shape, so packing does not double the model's memory. A weight tied to the input
    embeddings (the usual vocabulary projection) is kept, since the embedding lookup reads it.
    """
    owned_elsewhere = {
        id(parameter)
        for module in model.modules()
        if not isinstance(module, torch.nn.Linear)
        for parameter in module.parameters(recurse=False)
    }
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if type(module) is not torch.nn.Linear or module.weight.device.type != "cpu":
                continue
            weight = module.weight
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
            module.__class__ = PackedLinear
            module.packed_weight = packed
            if id(weight) not in owned_elsewhere:
                module.weight = _placeholder(weight)
            count += 1
    return count


def try_pack(model: torch.nn.Module) -> bool:
    """Pack when it applies; on failure each layer is either packed or as loaded (same math)."""
    if not can_pack(model):
        return False
    try:
        count = pack_linear_layers(model)
    except RuntimeError as exc:  # an op missing from this PyTorch build: run unpacked
        log.warning("linear weights left unpacked: %s", exc)
        return False
    log.info("packed %d linear layers for CPU decoding", count)
    return count > 0
