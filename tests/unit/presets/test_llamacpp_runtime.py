"""Presets with GGUF weights get the llama.cpp engine on nodes without a GPU, unless forced."""

from __future__ import annotations

import pytest

from kaito.api.workspace import parse_workspace
from kaito.manifests.context import resolve
from kaito.manifests.inference import inference_flags
from kaito.presets import get_preset
from kaito.presets.catalog import select_runtime
from tests.unit.api.builders import make_workspace
from tests.unit.controller.builders import OPTIONS, stored

pytestmark = pytest.mark.unit

SMALL = "smollm2-135m-instruct"
CPU_SKU = "Standard_D4s_v3"  # not a GPU SKU kaito knows
GPU_SKU = "Standard_NC24ads_A100_v4"


def engine_for(instance_type: str, runtime_annotation: str | None = None) -> str:
    builder = make_workspace("small").inference(SMALL).instance_type(instance_type)
    if runtime_annotation is not None:
        builder = builder.annotation("kaito.sh/runtime", runtime_annotation)
    ctx = resolve(parse_workspace(stored(builder.obj())), OPTIONS)
    return inference_flags(ctx)["engine"]


def test_the_small_cpu_preset_names_its_gguf() -> None:
    preset = get_preset(SMALL)
    assert preset is not None and preset.gguf == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_node_without_a_gpu_gets_llamacpp_for_a_preset_with_gguf() -> None:
    assert engine_for(CPU_SKU) == "llamacpp"


def test_a_workspace_can_still_force_the_torch_engine() -> None:
    assert engine_for(CPU_SKU, "transformers") == "transformers"


def test_a_gpu_node_keeps_the_torch_engine_unless_llamacpp_is_asked_for() -> None:
    assert engine_for(GPU_SKU) == "transformers"
    assert engine_for(GPU_SKU, "llamacpp") == "llamacpp"


def test_a_preset_without_gguf_never_gets_llamacpp() -> None:
    preset = get_preset("phi-3-mini-4k-instruct")
    assert preset is not None and preset.gguf is None
    assert select_runtime(preset, gpu_node=False) == "vllm"
    assert select_runtime(preset, {"kaito.sh/runtime": "llamacpp"}) == "vllm"


def test_local_mode_serves_the_small_preset_with_llamacpp_without_a_gpu() -> None:
    from kaito.local.plan import HostInfo, ServePlan, plan_workspace

    body = make_workspace("local").inference(SMALL).instance_type(None).obj()
    laptop = plan_workspace(body, host=HostInfo(memory_gib=16.0))
    gpu_box = plan_workspace(
        body, host=HostInfo(memory_gib=64.0, cuda_devices=1, gpu_memory_gib=80.0)
    )
    assert isinstance(laptop, ServePlan) and laptop.engine == "llamacpp"
    assert isinstance(gpu_box, ServePlan) and gpu_box.engine == "transformers"
