"""oneDNN-packed linear layers on a tiny model: same outputs and gradients as dense ones."""

from __future__ import annotations

import copy

import pytest
import torch

from kaito.runtime.inference.config import parse_args
from kaito.runtime.inference.packed_linear import (
    PackedLinear,
    can_pack,
    pack_linear_layers,
    quantize_int8,
)
from kaito.runtime.inference.precision import native_bf16

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN"
)


VOCAB, HIDDEN, INNER = 600, 512, 1024


class TinyLM(torch.nn.Module):
    """Embedding tied to the output projection, like most small causal LMs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.key = torch.nn.Linear(HIDDEN, 64, bias=False)  # too small to be worth packing
        self.up = torch.nn.Linear(HIDDEN, INNER)
        self.down = torch.nn.Linear(INNER, HIDDEN, bias=False)
        self.head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)
        hidden = hidden + self.down(torch.relu(self.up(hidden))) + self.key(hidden).sum()
        return self.head(hidden)  # type: ignore[no-any-return]


def make_pair() -> tuple[TinyLM, TinyLM]:
    torch.manual_seed(0)
    dense = TinyLM().eval()
    packed = copy.deepcopy(dense)
    assert pack_linear_layers(packed) == 3
    return dense, packed


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (8, 1), (3, 5)])
def test_packed_layers_compute_what_dense_layers_compute(shape: tuple[int, int]) -> None:
    dense, packed = make_pair()
    ids = torch.randint(0, VOCAB, shape)
    with torch.inference_mode():
        expected, got = dense(ids), packed(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_small_layers_stay_dense_and_ties_survive() -> None:
    _, packed = make_pair()
    assert type(packed.key) is torch.nn.Linear
    assert all(isinstance(m, PackedLinear) for m in (packed.up, packed.down, packed.head))
    assert packed.head.weight is packed.embed.weight


def test_one_row_takes_the_dense_weight_and_a_batch_the_packed_one() -> None:
    _, packed = make_pair()
    with torch.no_grad():
        packed.up.weight.zero_()  # only the dense path sees this; the packed copy is intact
    rows = torch.randn(4, HIDDEN)
    with torch.inference_mode():
        one = packed.up(rows[:1])
        batch = packed.up(rows)
    torch.testing.assert_close(one, packed.up.bias.expand(1, INNER))
    assert not torch.allclose(batch[:1], one)


def test_packing_twice_changes_nothing_and_only_fp32_or_native_bf16_models_qualify() -> None:
    _, packed = make_pair()
    assert pack_linear_layers(packed) == 0
    assert can_pack(TinyLM())
    assert can_pack(TinyLM().to(torch.bfloat16)) == native_bf16()
    assert not can_pack(TinyLM().to(torch.float16))


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16")
def test_bf16_one_row_takes_the_int8_copy_and_two_rows_the_packed_one() -> None:
    model = TinyLM().to(torch.bfloat16)
    assert pack_linear_layers(model) == 4  # the small key projection gets its int8 copy too
    assert model.key.packed_weight is None and model.key.int8_weight is not None
    with torch.no_grad():
        model.up.weight.zero_()  # neither inference copy sees this
        assert model.up.int8_weight is not None
        model.up.int8_weight.zero_()  # only the int8 copy: one row now gives the bias alone
    rows = torch.randn(2, HIDDEN, dtype=torch.bfloat16)
    with torch.inference_mode():
        one = model.up(rows[:1])
        two = model.up(rows)
    torch.testing.assert_close(one, model.up.bias.expand(1, INNER))
    assert not torch.allclose(two[:1], one)


def test_int8_copies_are_within_half_a_step_of_the_weight() -> None:
    weight = torch.randn(64, 96) * torch.linspace(0.01, 3.0, 64)[:, None]
    quantized, scales = quantize_int8(weight)
    assert quantized.dtype == torch.int8 and scales.shape == (64,)
    assert int(quantized.abs().max()) == 127  # each row's largest value uses the full range
    error = (quantized.float() * scales[:, None] - weight).abs()
    assert bool((error <= scales[:, None] / 2 + 1e-6).all())
    # Just past: a step of a quarter more than the scale would exceed it somewhere.
    assert not bool((error <= scales[:, None] / 4).all())


def test_fp32_models_get_no_int8_copy() -> None:
    _, packed = make_pair()
    assert all(m.int8_weight is None for m in packed.modules() if isinstance(m, PackedLinear))


def test_a_packed_model_can_be_deep_copied() -> None:
    _, packed = make_pair()
    twin = copy.deepcopy(packed)
    assert twin.up.packed_weight is packed.up.packed_weight  # read-only, shared
    assert twin.head.weight is twin.embed.weight  # the tie survives the copy
    ids = torch.randint(0, VOCAB, (2, 3))
    with torch.inference_mode():
        torch.testing.assert_close(twin(ids), packed(ids))


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16")
def test_a_deep_copy_of_a_bf16_model_shares_its_int8_copies() -> None:
    model = TinyLM().to(torch.bfloat16)
    pack_linear_layers(model)
    twin = copy.deepcopy(model)
    assert twin.up.int8_weight is model.up.int8_weight
    assert twin.up.int8_scales is model.up.int8_scales
    assert twin.up.weight is not model.up.weight  # the dense weights are the copy's own
    rows = torch.randn(1, HIDDEN, dtype=torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(twin.up(rows), model.up(rows))


def test_a_packed_model_still_trains_through_its_dense_weights() -> None:
    dense, packed = make_pair()
    ids = torch.randint(0, VOCAB, (4, 3))
    for model in (dense, packed):
        model.zero_grad()
        model(ids).logsumexp(-1).mean().backward()
    dense_grads = dict(dense.named_parameters())
    compared = 0
    for name, param in packed.named_parameters():
        expected = dense_grads[name].grad
        assert expected is not None and expected.abs().sum() > 0, name  # the loss reaches it
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-5, msg=name)
        compared += 1
    # embed/head (tied), key, up (weight, bias), down: every parameter, packed layers included.
    assert compared == 5


def test_packing_is_on_by_default_and_a_flag_turns_it_off() -> None:
    assert parse_args([]).weight_packing is True
    assert parse_args(["--no-weight-packing"]).weight_packing is False
