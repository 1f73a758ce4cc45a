"""Model presets, GPU instance types and the GPU-memory estimator (pure data and arithmetic)."""

from kaito.presets.catalog import (
    Catalog,
    CatalogError,
    Preset,
    TuningSupport,
    default_catalog,
    get_preset,
    load_catalog,
    select_runtime,
)
from kaito.presets.estimator import (
    NodeEstimate,
    bypass_resource_checks,
    estimate_nodes,
    estimate_tuning_memory_gib,
    has_enough_total_memory,
    target_node_count,
    tuning_gpu_count,
)
from kaito.presets.skus import Sku, SkuTable, default_skus, get_sku, unknown_sku

__all__ = [
    "Catalog",
    "CatalogError",
    "NodeEstimate",
    "Preset",
    "Sku",
    "SkuTable",
    "TuningSupport",
    "bypass_resource_checks",
    "default_catalog",
    "default_skus",
    "estimate_nodes",
    "estimate_tuning_memory_gib",
    "get_preset",
    "get_sku",
    "has_enough_total_memory",
    "load_catalog",
    "select_runtime",
    "target_node_count",
    "tuning_gpu_count",
    "unknown_sku",
]
