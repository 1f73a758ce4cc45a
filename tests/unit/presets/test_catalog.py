"""The preset catalog: every upstream preset resolves, and its data is self-consistent."""

from __future__ import annotations

import pytest

from kaito.api.workspace import parse_workspace
from kaito.manifests.context import resolve
from kaito.manifests.inference import inference_flags
from kaito.manifests.options import ClusterOptions
from kaito.presets import (
    CatalogError,
    default_catalog,
    default_skus,
    get_preset,
    load_catalog,
    select_runtime,
)
from tests.unit.api.builders import make_workspace
from tests.unit.controller.builders import stored

UPSTREAM_PRESETS = [
    "phi-4",
    "phi-4-mini-instruct",
    "phi-3-mini-4k-instruct",
    "phi-3-mini-128k-instruct",
    "phi-3-medium-4k-instruct",
    "phi-3-medium-128k-instruct",
    "phi-3.5-mini-instruct",
    "llama-3.1-8b-instruct",
    "llama-3.3-70b-instruct",
    "deepseek-r1-distill-llama-8b",
    "deepseek-r1-distill-qwen-14b",
    "deepseek-r1-0528",
    "deepseek-v3-0324",
    "qwen2.5-coder-7b-instruct",
    "qwen2.5-coder-32b-instruct",
    "gpt-oss-20b",
    "gpt-oss-120b",
    "gemma-3-4b-instruct",
    "gemma-3-27b-instruct",
    "mistral-7b",
    "mistral-7b-instruct",
    "ministral-3-3b-instruct",
    "ministral-3-8b-instruct",
    "ministral-3-14b-instruct",
    "mistral-large-3-675b-instruct",
    "falcon-7b",
    "falcon-7b-instruct",
    "falcon-40b",
    "falcon-40b-instruct",
    "phi-2",
    "qwen3-8b-awq",
    "gemma-4-31b-it",
    "kimi-k2.5",
    "granite-4.1-8b",
    "smollm2-135m-instruct",
]
TUNABLE = [
    "phi-4",
    "phi-4-mini-instruct",
    "phi-3-mini-4k-instruct",
    "phi-3-mini-128k-instruct",
    "phi-3-medium-4k-instruct",
    "phi-3-medium-128k-instruct",
    "phi-3.5-mini-instruct",
    "mistral-7b",
    "qwen2.5-coder-7b-instruct",
    "qwen2.5-coder-32b-instruct",
    "falcon-7b",
    "falcon-40b",
    "smollm2-135m-instruct",
]


@pytest.mark.parametrize("name", UPSTREAM_PRESETS)
def test_every_upstream_preset_is_in_the_catalog(name: str) -> None:
    preset = get_preset(name)
    assert preset is not None
    assert preset.weights_gib > 0 and preset.disk_gib > 0
    assert preset.context_length >= 2048 and preset.bytes_per_token > 0
    assert preset.runtimes


@pytest.mark.parametrize("name", TUNABLE)
def test_tunable_presets_support_lora_and_qlora(name: str) -> None:
    preset = get_preset(name)
    assert preset is not None and preset.tuning is not None
    assert preset.supports_method("lora") and preset.supports_method("QLoRA")


def test_the_catalog_holds_the_upstream_generated_models_too() -> None:
    assert len(default_catalog()) >= 70


def test_the_compat_preset_matches_upstream_numbers() -> None:
    preset = get_preset("phi-3-mini-128k-instruct")
    assert preset is not None
    assert preset.hf_id == "microsoft/Phi-3-mini-128k-instruct"
    assert preset.revision == "072cb7562cb8c4adf682a8e186aaafa49469eb5d"
    assert (preset.weights_gib, preset.disk_size, preset.context_length) == (7.12, "87Gi", 131072)
    assert preset.tuning is not None and preset.tuning.disk_gib == 80
    assert preset.transformers_args == {
        "torch_dtype": "auto",
        "pipeline": "text-generation",
        "trust_remote_code": "",
    }
    assert "q_proj" in preset.tuning.target_modules


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("mistral-7b-v0.3", "mistral-7b"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b-instruct"),
        ("google/gemma-3-4b-it", "gemma-3-4b-instruct"),
        ("gemma-3-27b-it", "gemma-3-27b-instruct"),
        ("PHI-3-MINI-128K-INSTRUCT", "phi-3-mini-128k-instruct"),
        ("microsoft/Phi-3-mini-128k-instruct", "phi-3-mini-128k-instruct"),
        ("ministral-3-8b-instruct-2512", "ministral-3-8b-instruct"),
    ],
)
def test_aliases_and_hugging_face_ids_resolve_case_insensitively(alias: str, name: str) -> None:
    preset = get_preset(alias)
    assert preset is not None and preset.name == name


def test_served_names_are_the_lowercased_repo_suffix() -> None:
    preset = get_preset("gemma-3-4b-instruct")
    assert preset is not None and preset.served_name == "gemma-3-4b-it"


def test_the_small_cpu_preset_is_local_and_transformers_only() -> None:
    preset = get_preset("smollm2-135m-instruct")
    assert preset is not None
    assert preset.cpu and preset.source == "local:smollm2" and preset.source_kind == "local"
    assert preset.runtimes == ("transformers",)
    assert select_runtime(preset) == "transformers"


def test_r1_distills_do_not_inherit_the_deepseek_tokenizer_or_tool_parser() -> None:
    preset = get_preset("deepseek-r1-distill-llama-8b")
    assert preset is not None
    assert "tokenizer_mode" not in preset.vllm_args and "tool_call_parser" not in preset.vllm_args
    assert preset.vllm_args["reasoning_parser"] == "deepseek_r1"


def test_runtime_selection_prefers_vllm_unless_the_annotation_asks_for_transformers() -> None:
    preset = get_preset("phi-3-mini-4k-instruct")
    assert preset is not None
    assert select_runtime(preset) == "vllm"
    assert select_runtime(preset, {"kaito.sh/runtime": "transformers"}) == "transformers"
    assert select_runtime(preset, vllm_enabled=False) == "transformers"


def test_deprecated_presets_are_marked() -> None:
    assert {p.name for p in default_catalog() if p.deprecated} >= {"phi-2", "llama-2-7b"}


def test_suggestions_find_close_names() -> None:
    assert "phi-3-mini-4k-instruct" in default_catalog().suggest("phi-3-mini-4k")


def test_startup_timeout_scales_with_weights_within_bounds() -> None:
    small, huge = get_preset("phi-3-mini-4k-instruct"), get_preset("deepseek-r1-0528")
    assert small is not None and huge is not None
    assert small.startup_timeout_minutes == 30
    assert huge.startup_timeout_minutes == 180


def test_a_catalog_with_a_duplicate_name_is_rejected() -> None:
    entry = (
        "  - {name: x, hf_id: o/x, weights_gib: 1, disk_gib: 1, context_length: 2048,"
        " bytes_per_token: 1, runtimes: [vllm]}\n"
    )
    with pytest.raises(CatalogError, match="duplicate"):
        load_catalog("models:\n" + entry + entry)


def test_a_catalog_entry_with_an_unknown_runtime_is_rejected() -> None:
    text = (
        "models:\n  - {name: x, hf_id: o/x, weights_gib: 1, disk_gib: 1, context_length: 2048,"
        " bytes_per_token: 1, runtimes: [tgi]}\n"
    )
    with pytest.raises(CatalogError, match="runtime"):
        load_catalog(text)


def test_every_preset_resolves_for_each_of_its_runtimes_with_its_own_arguments() -> None:
    # On the largest GPU SKU (a CPU one for CPU presets) every (preset, runtime) pair resolves
    # to a workload whose server command carries that runtime's arguments from the catalog.
    biggest = max((s for s in default_skus() if s.cloud == "azure"), key=lambda s: s.gpu_memory_gib)
    for preset in default_catalog():
        for runtime in preset.runtimes:
            body = (
                make_workspace("w")
                .inference(preset.name)
                .instance_type("Standard_D4s_v3" if preset.cpu else biggest.name)
                .runtime(runtime)
                .obj()
            )
            ctx = resolve(parse_workspace(stored(body)), ClusterOptions())
            flags = inference_flags(ctx)
            assert (ctx.runtime, flags["engine"]) == (runtime, runtime), preset.name
            if runtime == "vllm":
                args = {k.replace("_", "-"): v for k, v in preset.vllm_args.items()}
            else:
                args = dict(preset.transformers_args)
            assert {k: flags.get(k) for k in args} == args, (preset.name, runtime)
        if "transformers" in preset.runtimes and preset.family not in ("llama", "smollm"):
            assert preset.transformers_args or preset.deprecated, preset.name
