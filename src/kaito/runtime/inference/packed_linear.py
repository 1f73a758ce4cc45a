"""Linear layers with oneDNN-prepacked weights, for fp32 and bf16 decoding on CPU.

Why: a decode step multiplies a handful of rows (one per running sequence) by every weight
matrix. For those shapes MKL's generic GEMM on an AVX2 CPU costs ~4x a single row at 8 rows,
while oneDNN with weights reordered once into its blocked layout costs ~2x, and the vocabulary
projection (the largest matrix) ~3x less than MKL (measured in docs/inference.md). For a single
row MKL is still faster on the small projections, so those keep using the dense weight. The
numbers are the same fp32 math in another summation order; greedy answers were unchanged on
SmolLM2. bf16 weights (see precision.py) are packed for every row count: on an AVX-512 BF16 CPU
the packed bf16 step was as fast as the dense one on one row and ~1.3x faster on 8 and 16.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from kaito.runtime.inference.precision import native_bf16

log = logging.getLogger(__name__)

# Measured on 2 AVX2 cores (docs/inference.md): oneDNN wins from two rows on, and on one row for
# the vocabulary-sized projection; on matrices below MIN_PACKED_WEIGHTS (such as the key and
# value projections of grouped-query attention) MKL stays as fast or faster.
PACKED_MIN_ROWS = 2
PACKED_ALWAYS_MIN_FEATURES = 8192
MIN_PACKED_WEIGHTS = 1 << 18


class PackedLinear(torch.nn.Linear):  # type: ignore[misc]  # torch is untyped under our mypy config
    """`nn.Linear` that also holds a oneDNN-packed copy of its weight for batched inference.

    Stays an `nn.Linear` with its dense weight, so peft can wrap it with LoRA layers, adapter
    checks read its shape, and training (which needs a backward) takes the dense path.
    """

    packed_weight: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        small = (
            rows.shape[0] < PACKED_MIN_ROWS
            and self.out_features < PACKED_ALWAYS_MIN_FEATURES
            and self.weight.dtype == torch.float32
        )
        if small or (x.requires_grad and torch.is_grad_enabled()):
            return torch.nn.functional.linear(x, self.weight, self.bias)
        if not rows.is_contiguous():
            rows = rows.contiguous()
        linear = torch.ops.mkldnn._linear_pointwise
        out = linear(rows, self.packed_weight, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedLinear:
        # oneDNN's opaque tensors cannot be copied; nothing writes them after packing, so copies
        # share them.
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        memo[id(self.packed_weight)] = self.packed_weight
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone


def can_pack(model: Any) -> bool:
    """Packing applies on CPU with oneDNN to fp32 models, and to bf16 ones where bf16 is native."""
    if not torch.backends.mkldnn.is_available():
        return False
    parameter = next(iter(model.parameters()), None)
    if parameter is None or parameter.device.type != "cpu":
        return False
    return parameter.dtype == torch.float32 or (parameter.dtype == torch.bfloat16 and native_bf16())


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Turn every plain `nn.Linear` of `model` into a `PackedLinear`; returns how many."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if type(module) is not torch.nn.Linear or module.weight.device.type != "cpu":
                continue
            if module.weight.numel() < MIN_PACKED_WEIGHTS:
                continue
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), None)
            module.__class__ = PackedLinear
            module.packed_weight = packed
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
    log.info("packed %d linear layers for batched CPU decoding", count)
    return count > 0
