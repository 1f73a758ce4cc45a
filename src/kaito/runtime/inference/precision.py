"""The floating-point format the torch engine computes in on this CPU (`--dtype auto`).

Why: decoding a small batch on CPU is bound by reading the weights, so halving their size nearly
halves a step where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX): SmolLM2-135M's
single-row step went from ~68 ms (fp32) to ~34 ms (bf16, oneDNN-packed) on 2 AMD EPYC cores
(docs/inference.md). Where the CPU lacks those instructions bf16 is emulated and slower than
fp32, so `auto` keeps the checkpoint's format there. An explicit `--dtype` always wins.
"""

from __future__ import annotations

import functools

import torch

_FLOAT_FORMATS = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware, as oneDNN sees it."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an op missing from this build: assume emulation
        return False


def serving_dtype(checkpoint: torch.dtype | None, *, native: bool) -> torch.dtype:
    """The dtype `auto` means for a CPU engine, given the checkpoint's own format.

    fp16 checkpoints become bf16 too: CPUs multiply fp16 only through conversions, and bf16
    keeps fp32's exponent range, so nothing that fit in fp16 overflows.
    """
    if native and (checkpoint is None or checkpoint in _FLOAT_FORMATS):
        return torch.bfloat16
    return checkpoint if checkpoint is not None else torch.float32
