"""Packing the small model's linear layers does not change its greedy answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kaito.runtime.inference.packed_linear import can_pack, pack_linear_layers

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN"
)


def test_greedy_answers_of_the_small_model_do_not_change(model_dir: Path) -> None:
    from kaito.runtime.inference.engine import load_model

    dense, tokenizer = load_model(model_dir, "float32")
    packed, _ = load_model(model_dir, "float32")
    assert can_pack(packed)
    pack_linear_layers(packed)
    ids = tokenizer("The three most important ideas in physics are", return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = dense.generate(ids, max_new_tokens=24, do_sample=False)
        got = packed.generate(ids, max_new_tokens=24, do_sample=False)
    assert tokenizer.decode(got[0]) == tokenizer.decode(expected[0])
