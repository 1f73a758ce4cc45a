"""oneDNN-packed linear layers: same answers as dense ones, less memory kept, clear refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from kaito.runtime.inference.config import parse_args
from kaito.runtime.inference.packed_linear import PackedLinear, can_pack, pack_linear_layers

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN"
)


class TinyLM(torch.nn.Module):
    """Embedding tied to the output projection, like most small causal LMs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.up = torch.nn.Linear(16, 64)
        self.down = torch.nn.Linear(64, 16, bias=False)
        self.head = torch.nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)
        return self.head(self.down(torch.relu(self.up(hidden))))  # type: ignore[no-any-return]


def make_pair() -> tuple[TinyLM, TinyLM]:
    torch.manual_seed(0)
    dense = TinyLM().eval()
    packed = copy.deepcopy(dense)
    assert pack_linear_layers(packed) == 3
    return dense, packed


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (8, 1), (3, 5)])
def test_packed_layers_compute_what_dense_layers_compute(shape: tuple[int, int]) -> None:
    dense, packed = make_pair()
    ids = torch.randint(0, 50, shape)
    with torch.inference_mode():
        expected, got = dense(ids), packed(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_dense_weights_are_released_except_the_one_the_embedding_reads() -> None:
    dense, packed = make_pair()
    assert all(isinstance(m, PackedLinear) for m in (packed.up, packed.down, packed.head))
    for name in ("up", "down"):
        weight = getattr(packed, name).weight
        assert weight.shape == getattr(dense, name).weight.shape  # what adapter checks read
        assert weight.stride() == (0, 0)  # a placeholder: no memory behind it
    assert packed.head.weight is packed.embed.weight
    torch.testing.assert_close(packed.embed.weight, dense.embed.weight)
    torch.testing.assert_close(packed.up.bias, dense.up.bias)


def test_packing_twice_changes_nothing_and_only_fp32_cpu_models_qualify() -> None:
    _, packed = make_pair()
    assert pack_linear_layers(packed) == 0
    assert can_pack(TinyLM())
    assert not can_pack(TinyLM().to(torch.bfloat16))


def test_a_packed_model_can_be_deep_copied_without_materializing_weights() -> None:
    _, packed = make_pair()
    twin = copy.deepcopy(packed)
    assert twin.up.packed_weight is packed.up.packed_weight  # read-only, shared
    assert twin.up.weight.stride() == (0, 0)
    assert twin.head.weight is twin.embed.weight  # the tie survives the copy
    ids = torch.randint(0, 50, (2, 3))
    with torch.inference_mode():
        torch.testing.assert_close(twin(ids), packed(ids))


def test_training_through_a_packed_layer_is_refused_with_the_way_out() -> None:
    _, packed = make_pair()
    hidden = torch.randn(2, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="without weight packing"):
        packed.up(hidden)


def test_packing_is_on_by_default_and_a_flag_turns_it_off() -> None:
    assert parse_args([]).weight_packing is True
    assert parse_args(["--no-weight-packing"]).weight_packing is False


def test_greedy_answers_of_the_small_model_do_not_change(model_dir: Path) -> None:
    from kaito.runtime.inference.engine import load_model

    dense, tokenizer = load_model(model_dir)
    packed, _ = load_model(model_dir)
    assert can_pack(packed)
    pack_linear_layers(packed)
    ids = tokenizer("The three most important ideas in physics are", return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = dense.generate(ids, max_new_tokens=24, do_sample=False)
        got = packed.generate(ids, max_new_tokens=24, do_sample=False)
    assert tokenizer.decode(got[0]) == tokenizer.decode(expected[0])
