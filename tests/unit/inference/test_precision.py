"""`--dtype auto` on CPU: bf16 only where the CPU computes it natively."""

from __future__ import annotations

import pytest
import torch

from kaito.runtime.inference.precision import serving_dtype


@pytest.mark.parametrize("stored", [torch.float32, torch.float16, torch.bfloat16, None])
def test_native_bf16_cpus_serve_every_float_checkpoint_in_bf16(stored: torch.dtype | None) -> None:
    assert serving_dtype(stored, native=True) == torch.bfloat16


@pytest.mark.parametrize("stored", [torch.float32, torch.float16, torch.bfloat16])
def test_other_cpus_keep_the_checkpoint_format(stored: torch.dtype) -> None:
    assert serving_dtype(stored, native=False) == stored


def test_an_unknown_format_is_fp32_without_native_bf16() -> None:
    assert serving_dtype(None, native=False) == torch.float32


def test_a_non_float_format_is_never_changed() -> None:
    assert serving_dtype(torch.float64, native=True) == torch.float64
