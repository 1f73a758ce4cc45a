"""SKU tables: legacy rows kept, case-insensitive lookups, one-GPU fallback for unknown types."""

from __future__ import annotations

import pytest

from kaito.presets import default_skus, get_sku, tuning_gpu_count, unknown_sku
from kaito.presets.skus import is_azure_gpu_family


def test_the_legacy_v100_sku_is_kept() -> None:
    sku = get_sku("Standard_NC6s_v3")
    assert sku is not None
    assert (sku.gpus, sku.gpu_memory_gib, sku.gpu_model) == (1, 16, "V100")
    assert sku.is_legacy


@pytest.mark.parametrize(
    ("name", "gpus", "memory", "model"),
    [
        ("Standard_NC24ads_A100_v4", 1, 80, "A100"),
        ("Standard_ND96amsr_A100_v4", 8, 640, "A100"),
        ("Standard_NC12", 2, 24, "K80"),
        ("p5.48xlarge", 8, 640, "H100"),
        ("g5.2xlarge", 1, 24, "A10G"),
        ("g6.12xlarge", 4, 96, "L4"),
        ("trn1n.32xlarge", 16, 512, "AWS Trainium"),
        ("Standard_NC32_A16", 2, 32, "A16"),
    ],
)
def test_rows_carry_gpu_count_total_memory_and_model(
    name: str, gpus: int, memory: float, model: str
) -> None:
    sku = get_sku(name)
    assert sku is not None
    assert (sku.gpus, sku.gpu_memory_gib, sku.gpu_model) == (gpus, memory, model)


def test_lookups_ignore_case() -> None:
    assert get_sku("standard_nc6s_v3") == get_sku("Standard_NC6s_v3")


def test_lookups_can_be_limited_to_one_cloud() -> None:
    assert get_sku("g5.2xlarge", "aws") is not None
    assert get_sku("g5.2xlarge", "azure") is None


def test_an_unknown_sku_falls_back_to_one_gpu_without_memory_data() -> None:
    sku = default_skus().resolve("Standard_NX99_future")
    assert sku == unknown_sku("Standard_NX99_future")
    assert not sku.known and sku.gpus == 1
    assert tuning_gpu_count(sku) == 1


def test_tuning_uses_every_gpu_of_a_known_sku() -> None:
    sku = get_sku("Standard_NC48ads_A100_v4")
    assert sku is not None and tuning_gpu_count(sku) == 2


def test_per_gpu_memory_divides_the_total() -> None:
    sku = get_sku("Standard_NV72ads_A10_v5")
    assert sku is not None and sku.gpu_memory_per_gpu_gib == 24


def test_azure_gpu_family_prefixes() -> None:
    assert is_azure_gpu_family("standard_nd999") and is_azure_gpu_family("Standard_D4s_v5")
    assert not is_azure_gpu_family("Standard_E4s_v5")


def test_names_list_current_skus_only_on_request() -> None:
    current = default_skus().names("azure", current_only=True)
    assert "Standard_NC24ads_A100_v4" in current and "Standard_NC6s_v3" not in current
