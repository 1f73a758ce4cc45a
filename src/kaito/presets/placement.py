"""How a preset runs on one instance type: nodes, GPUs, engine, or why it is refused (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from kaito.presets.catalog import Preset, Runtime, select_runtime
from kaito.presets.estimator import estimate_nodes
from kaito.presets.skus import Sku, SkuTable
from kaito.presets.validation import suggest_skus


@dataclass(frozen=True)
class Placement:
    """The answer `kaito presets --sku` prints: runs (with `nodes`) or refused, and why."""

    runtime: Runtime
    nodes: int
    runs: bool
    summary: str


def place(preset: Preset, sku: Sku, skus: SkuTable, *, runtime: Runtime | None = None) -> Placement:
    """Where `preset` lands on `sku` with its default runtime (or `runtime`)."""
    engine = runtime or select_runtime(preset)
    if preset.cpu:
        return Placement(engine, 1, True, "CPU: no GPU node needed")
    if engine == "transformers":
        # Each transformers replica loads the whole model on its node; resource.count adds
        # replicas, never splits the model.
        if sku.known and sku.gpu_memory_gib < preset.weights_gib:
            return Placement(
                engine,
                0,
                False,
                f"refused: {preset.weights_gib:g} GiB > {sku.gpu_memory_gib:g} GiB of one node",
            )
        return Placement(engine, 1, True, f"1 node, {_gpus(sku)} (transformers)")
    estimate = estimate_nodes(preset, sku)
    if estimate.fits:
        parallel = ", tensor parallel" if sku.gpus > 1 else ""
        return Placement(engine, 1, True, f"1 node, {_gpus(sku)} (vLLM{parallel})")
    if estimate.nodes > 1:
        better = next(iter(suggest_skus(preset, skus, sku.cloud, limit=1)), "none known")
        return Placement(
            engine,
            estimate.nodes,
            False,
            f"refused: {estimate.nodes} nodes, vLLM runs on 1 -> {better}",
        )
    return Placement(engine, 0, False, "refused: too little memory per GPU")


def _gpus(sku: Sku) -> str:
    return f"{sku.gpus} GPU" + ("s" if sku.gpus != 1 else "")
