"""Linear layers with oneDNN-prepacked weights, for fp32 and bf16 decoding on CPU.

Why: a decode step multiplies a handful of rows (one per running sequence) by every weight
matrix. For those shapes MKL's generic GEMM on an AVX2 CPU costs ~4x a single row at 8 rows,
while oneDNN with weights reordered once into its blocked layout costs ~2x, and the vocabulary
projection (the largest matrix) ~3x less than MKL (measured in docs/inference.md). For a single
row MKL is still faster on the small projections, so those keep using the dense weight. The
numbers are the same fp32 math in another summation order; greedy answers were unchanged on
SmolLM2. bf16 weights (see precision.py) are packed for every row count: on an AVX-512 BF16 CPU
the packed bf16 step was as fast as the dense one on one row and ~1.3x faster on 8 and 16.

A bf16 model also gets an int8 copy of every linear weight (per output channel, symmetric) for
steps of a single row, the one-user case: there the step only streams weights, and reading half
the bytes made SmolLM2's step ~1.5x faster (34 -> 23 ms). From two rows on the int8 kernel loses
to oneDNN's bf16 one, so batches keep bf16. fp32 models never get it: fp32 is the exact mode.
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
INT8_MAX_ROWS = 1


class PackedLinear(torch.nn.Linear):  # type: ignore[misc]  # torch is untyped under our mypy config
    """`nn.Linear` that also holds inference copies of its weight: oneDNN-packed, and int8.

    Stays an `nn.Linear` with its dense weight, so peft can wrap it with LoRA layers, adapter
    checks read its shape, and training (which needs a backward) takes the dense path.
    """

    packed_weight: torch.Tensor | None = None
    int8_weight: torch.Tensor | None = None  # [out, in] int8
    int8_scales: torch.Tensor | None = None  # [out], the weight's dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return torch.nn.functional.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1])
        if not rows.is_contiguous():
            rows = rows.contiguous()
        if self.int8_weight is not None and rows.shape[0] <= INT8_MAX_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(rows, self.int8_weight, self.int8_scales)
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(*x.shape[:-1], out.shape[-1])
        small = (
            rows.shape[0] < PACKED_MIN_ROWS
            and self.out_features < PACKED_ALWAYS_MIN_FEATURES
            and self.weight.dtype == torch.float32
        )
        if self.packed_weight is None or small:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        linear = torch.ops.mkldnn._linear_pointwise
        out = linear(rows, self.packed_weight, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedLinear:
        # oneDNN's opaque tensors cannot be copied; nothing writes them or the int8 copy after
        # packing, so copies share them (a copy then costs only the dense weights).
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for shared in (self.packed_weight, self.int8_weight, self.int8_scales):
            if shared is not None:
                memo[id(shared)] = shared
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
    """Turn every plain `nn.Linear` of `model` into a `PackedLinear`; returns how many.

    Layers of a bf16 model also get their int8 copy (see the module's docstring).
    """
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if type(module) is not torch.nn.Linear or module.weight.device.type != "cpu":
                continue
            weight = module.weight.detach()
            int8 = weight.dtype == torch.bfloat16
            if weight.numel() < MIN_PACKED_WEIGHTS and not int8:
                continue
            packed = None
            if weight.numel() >= MIN_PACKED_WEIGHTS:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
            module.__class__ = PackedLinear
            module.packed_weight = packed
            if int8:
                module.int8_weight, module.int8_scales = quantize_int8(weight)
            count += 1
    return count


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: `weight ~= int8 * scales[:, None]`."""
    full = weight.float()
    scales = full.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    quantized = torch.round(full / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return quantized.contiguous(), scales.to(weight.dtype)


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
