"""GPU-memory estimator numbers, checked against values computed by hand from upstream's formula.

avail = mem/GPU x 0.84; reserve = 2.3 + 2048 x bytes_per_token / 2^30 / GPUs;
usable = (avail - reserve) / 1.05; minGPUs = floor(1.02 W / usable) + 1; nodes = ceil(minGPUs/GPUs).
"""

from __future__ import annotations

import pytest

from kaito.api import parse_workspace
from kaito.presets import (
    bypass_resource_checks,
    estimate_nodes,
    get_preset,
    get_sku,
    has_enough_total_memory,
    target_node_count,
    unknown_sku,
)
from kaito.presets.catalog import Preset
from kaito.presets.skus import Sku

from ..api.builders import make_workspace, tuning_workspace


def preset(name: str) -> Preset:
    found = get_preset(name)
    assert found is not None
    return found


def sku(name: str) -> Sku:
    found = get_sku(name)
    assert found is not None
    return found


def test_phi_3_mini_fits_one_v100() -> None:
    # avail 16 x 0.84 = 13.44; reserve 2.3 + 2048 x 393216 / 2^30 = 3.05;
    # usable (13.44 - 3.05) / 1.05 = 9.895; 1.02 x 7.12 = 7.2624 -> floor(0.734) + 1 = 1 GPU.
    estimate = estimate_nodes(preset("phi-3-mini-128k-instruct"), sku("Standard_NC6s_v3"))
    assert estimate.available_per_gpu_gib == pytest.approx(13.44)
    assert estimate.reserve_per_gpu_gib == pytest.approx(3.05)
    assert estimate.usable_per_gpu_gib == pytest.approx(9.8952, abs=1e-3)
    assert (estimate.min_gpus, estimate.nodes, estimate.fits) == (1, 1, True)


def test_llama_70b_needs_three_a100_80gb_nodes_which_vllm_cannot_span() -> None:
    # avail 67.2; reserve 2.3 + 2048 x 327680 / 2^30 = 2.925; usable 61.214;
    # 1.02 x 131.42 = 134.048 -> floor(2.19) + 1 = 3 GPUs -> 3 single-GPU nodes.
    estimate = estimate_nodes(preset("llama-3.3-70b-instruct"), sku("Standard_NC24ads_A100_v4"))
    assert estimate.usable_per_gpu_gib == pytest.approx(61.2143, abs=1e-3)
    assert (estimate.min_gpus, estimate.nodes, estimate.fits) == (3, 3, False)
    assert "single node" in estimate.reason and "3 nodes of Standard_NC24ads_A100_v4" in (
        estimate.reason
    )


def test_llama_70b_fits_one_node_with_eight_a100s() -> None:
    # per GPU 40 x 0.84 = 33.6; reserve 2.3 + 0.625 / 8 = 2.378; usable 29.735;
    # 134.048 / 29.735 = 4.51 -> 5 GPUs -> ceil(5 / 8) = 1 node.
    estimate = estimate_nodes(preset("llama-3.3-70b-instruct"), sku("Standard_ND96asr_A100_v4"))
    assert (estimate.min_gpus, estimate.nodes) == (5, 1)


def test_a_longer_context_grows_the_reserve() -> None:
    # reserve 2.3 + 32768 x 393216 / 2^30 = 2.3 + 12 = 14.3 > 13.44 available: no fit.
    estimate = estimate_nodes(
        preset("phi-3-mini-128k-instruct"), sku("Standard_NC6s_v3"), max_model_len=32768
    )
    assert estimate.reserve_per_gpu_gib == pytest.approx(14.3)
    assert not estimate.fits and "max-model-len" in estimate.reason


def test_a_model_without_distributed_support_cannot_span_nodes() -> None:
    # falcon-40b on a 24 GiB A10: usable (20.16 - 2.3 - 0.0156) / 1.05 = 16.99;
    # 1.02 x 77.9 = 79.46 -> 5 GPUs -> 5 nodes, and falcon is single-node only.
    estimate = estimate_nodes(preset("falcon-40b"), sku("Standard_NV36ads_A10_v5"))
    assert estimate.nodes == 5 and not estimate.fits
    assert "multi-node" in estimate.reason


def test_an_unknown_sku_keeps_the_requested_count_of_one() -> None:
    estimate = estimate_nodes(preset("phi-4"), unknown_sku("Standard_NX1"), requested_count=1)
    assert (estimate.nodes, estimate.fits) == (1, True)


def test_an_unknown_sku_with_two_nodes_requested_is_refused_for_vllm() -> None:
    estimate = estimate_nodes(preset("phi-4"), unknown_sku("Standard_NX1"), requested_count=2)
    assert (estimate.nodes, estimate.fits) == (2, False)
    assert "resource.count to 1" in estimate.reason


@pytest.mark.parametrize(
    ("name", "instance", "count", "enough"),
    [
        ("phi-3-mini-128k-instruct", "Standard_NC6s_v3", 1, True),
        ("phi-4", "Standard_NC6s_v3", 1, False),
        ("phi-4", "Standard_NC6s_v3", 2, True),
        ("llama-3.3-70b-instruct", "Standard_NC24ads_A100_v4", 1, False),
    ],
)
def test_total_memory_check_compares_count_times_sku_memory_with_weights(
    name: str, instance: str, count: int, enough: bool
) -> None:
    assert has_enough_total_memory(preset(name), sku(instance), count) is enough


def test_the_bypass_annotation_counts_by_presence_alone() -> None:
    assert bypass_resource_checks({"kaito.sh/bypass-resource-checks": ""})
    assert not bypass_resource_checks({})


def test_target_node_count_is_one_for_tuning() -> None:
    workspace = parse_workspace(tuning_workspace())
    assert (
        target_node_count(
            workspace, preset("phi-3-mini-128k-instruct"), sku("Standard_NC6s_v3"), "vllm"
        )
        == 1
    )


def test_target_node_count_follows_the_estimator_for_vllm_and_count_for_transformers() -> None:
    workspace = parse_workspace(
        make_workspace("serve").inference("llama-3.3-70b-instruct").count(2).obj()
    )
    a100 = sku("Standard_NC24ads_A100_v4")
    llama = preset("llama-3.3-70b-instruct")
    assert target_node_count(workspace, llama, a100, "vllm") == 3
    assert target_node_count(workspace, llama, a100, "transformers") == 2


def test_qlora_of_phi_3_mini_fits_a_v100_and_lora_of_phi_4_does_not() -> None:
    from kaito.presets.estimator import estimate_tuning_memory_gib

    # qlora: 7.12 x 0.275 + 7.12 x 0.02 + 2.3 + 2 x 2048 x 393216 / 2^30 = 1.958 + 0.142 + 2.3 + 1.5
    phi3 = estimate_tuning_memory_gib(preset("phi-3-mini-128k-instruct"), "qlora")
    assert phi3 == pytest.approx(5.9, abs=0.01)
    assert phi3 < sku("Standard_NC6s_v3").gpu_memory_per_gpu_gib
    phi4 = estimate_tuning_memory_gib(preset("phi-4"), "lora")
    assert phi4 > sku("Standard_NC6s_v3").gpu_memory_per_gpu_gib
