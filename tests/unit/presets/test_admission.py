"""Full admission (validate_workspace): the catalog rules on top of the CRD rules."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from kaito.presets import default_skus, get_preset
from kaito.presets.catalog import default_catalog
from kaito.presets.limits import Limits
from kaito.presets.validation import (
    default_tuning_config,
    offline_config_map_lookup,
    suggest_skus,
    validate_workspace,
    workspace_warnings,
)

from ..api.builders import (
    Body,
    adding,
    inference_workspace,
    legacy_tuning_workspace,
    make_workspace,
    tuning_workspace,
    with_,
    without,
)


def fields(body: Body, **kwargs: object) -> list[str]:
    return [e.field for e in validate_workspace(body, **kwargs)]  # type: ignore[arg-type]


def messages(body: Body, **kwargs: object) -> str:
    return "\n".join(str(e) for e in validate_workspace(body, **kwargs))  # type: ignore[arg-type]


def test_the_legacy_workspace_is_admitted_unchanged() -> None:
    body = legacy_tuning_workspace()
    assert validate_workspace(body, config_map_lookup=offline_config_map_lookup()) == []


def test_the_legacy_workspace_only_warns_about_its_placeholder_image() -> None:
    warnings = workspace_warnings(legacy_tuning_workspace())
    assert [w.field for w in warnings] == ["tuning.output.image"]
    assert all(w.severity == "warning" for w in warnings)


def test_an_unknown_preset_is_rejected_with_suggestions() -> None:
    text = messages(inference_workspace(preset="phi-3-mini-4k"))
    assert "inference.preset.name" in text and "phi-3-mini-4k-instruct" in text


def test_a_deprecated_preset_is_rejected() -> None:
    assert "deprecated" in messages(
        inference_workspace(preset="phi-2", instance_type="Standard_NC24ads_A100_v4")
    )


def test_a_preset_that_cannot_be_tuned_is_rejected_at_admission() -> None:
    text = messages(tuning_workspace(preset="llama-3.1-8b-instruct"))
    assert "tuning.preset.name" in text and "cannot be tuned" in text and "phi-4" in text


def test_aliases_are_accepted_for_tuning() -> None:
    assert validate_workspace(tuning_workspace(preset="mistral-7b-v0.3")) == []


ALLOW_UNKNOWN = Limits(allow_non_gpu_instance_types=True)


@pytest.mark.parametrize("instance_type", ["Standard_NX99_future", "Standard_D4s_v3"])
def test_a_gpu_preset_on_an_unknown_or_cpu_instance_type_is_refused_unless_allowed(
    instance_type: str,
) -> None:
    for body in (
        inference_workspace(instance_type=instance_type),
        tuning_workspace(instance_type=instance_type),
    ):
        (error,) = validate_workspace(body)
        assert error.field == "resource.instanceType"
        assert "needs GPUs" in error.message
        assert "KAITO_ALLOW_NON_GPU_INSTANCE_TYPES" in error.message
        assert validate_workspace(body, limits=ALLOW_UNKNOWN) == []


def test_an_unknown_inference_sku_outside_the_azure_families_stays_refused_when_allowed() -> None:
    body = inference_workspace(instance_type="m5.large")
    assert fields(body, cloud_provider="aws") == ["resource.instanceType"]


def test_an_allowed_unknown_tuning_sku_is_admitted_with_a_warning() -> None:
    body = tuning_workspace(instance_type="Standard_NX99_future")
    assert validate_workspace(body, limits=ALLOW_UNKNOWN) == []
    assert [w.field for w in workspace_warnings(body)] == ["resource.instanceType"]


def test_a_cpu_preset_runs_on_a_cpu_instance_type() -> None:
    cpu_preset = next(p.name for p in default_catalog() if p.cpu)
    body = inference_workspace(preset=cpu_preset, instance_type="Standard_D4s_v3")
    assert validate_workspace(body) == []


def test_tuning_has_no_gpu_memory_check_so_the_v100_works() -> None:
    assert (
        validate_workspace(tuning_workspace(preset="phi-4", instance_type="Standard_NC6s_v3")) == []
    )


def test_an_instance_too_small_for_the_model_is_rejected_with_a_fix() -> None:
    text = messages(inference_workspace(preset="phi-4", instance_type="Standard_NC6s_v3"))
    assert "resource.instanceType" in text and "insufficient total GPU memory" in text
    assert "bypass-resource-checks" in text and "choose Standard_NV72ads_A10_v5" in text


def test_the_bypass_annotation_skips_memory_checks() -> None:
    body = (
        make_workspace("serve-phi-3")
        .inference("phi-4")
        .instance_type("Standard_NC6s_v3")
        .annotation("kaito.sh/bypass-resource-checks", "True")
        .obj()
    )
    assert validate_workspace(body) == []


def test_more_nodes_make_enough_total_memory_for_transformers() -> None:
    body = (
        make_workspace("serve-phi-3")
        .inference("phi-4")
        .instance_type("Standard_NC6s_v3")
        .count(2)
        .runtime("transformers")
        .obj()
    )
    assert validate_workspace(body) == []


def test_a_vllm_placement_needing_several_nodes_is_refused_naming_a_single_node_sku() -> None:
    # phi-4 needs 3 V100s; vLLM runs on one node, so admission names SKUs that hold it alone.
    body = (
        make_workspace("serve-phi-3").inference("phi-4").instance_type("Standard_NC6s_v3").count(2)
    ).obj()
    text = messages(body)
    assert "3 nodes of Standard_NC6s_v3" in text and "single node" in text
    assert "e.g. Standard_NV72ads_A10_v5" in text
    assert "bypass-resource-checks" not in text


def test_a_vllm_placement_on_one_node_of_several_gpus_is_admitted() -> None:
    body = inference_workspace(preset="phi-4", instance_type="Standard_NV72ads_A10_v5")
    assert validate_workspace(body) == []


def test_vllm_rejects_adapter_strength_but_transformers_takes_it() -> None:
    builder = make_workspace("serve-phi-3").inference().adapter(strength="0.5")
    body = builder.obj()
    assert fields(body) == ["inference.adapters[0].strength"]
    on_transformers = builder.runtime("transformers").obj()
    assert validate_workspace(on_transformers) == []


def test_a_runtime_the_preset_lacks_is_rejected() -> None:
    body = make_workspace("serve").inference("phi-4-mini-instruct").runtime("transformers").obj()
    assert fields(body) == ["metadata.annotations[kaito.sh/runtime]"]


def test_the_cpu_preset_is_served_by_transformers_without_a_gpu_sku() -> None:
    assert (
        validate_workspace(inference_workspace(preset="smollm2-135m-instruct", instance_type=None))
        == []
    )


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("metadata.name", "Bad_Name", "metadata.name"),
        ("metadata.name", "x" * 64, "metadata.name"),
        ("metadata.annotations", {"kaito.sh/node-image-family": "windows"}, "metadata.annotations"),
        ("metadata.annotations", {"kaito.sh/performance-mode": "fast"}, "metadata.annotations"),
        ("metadata.annotations", {"kaito.sh/use-local-weights": "yes"}, "metadata.annotations"),
        ("metadata.annotations", {"kaito.sh/runtime": "tgi"}, "metadata.annotations"),
    ],
)
def test_names_and_annotations_are_checked(path: str, value: object, field: str) -> None:
    change = with_ if path == "metadata.name" else adding
    assert any(f.startswith(field) for f in fields(change(inference_workspace(), path, value)))


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/data.parquet",
        "http://data.localhost/x",
        "http://127.0.0.1/x",
        "http://10.0.0.5/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://metadata.google.internal/x",
    ],
)
def test_dataset_urls_to_internal_hosts_are_blocked(url: str) -> None:
    body = with_(tuning_workspace(), "tuning.input.urls", [url])
    assert fields(body) == ["tuning.input.urls[0]"]


def test_v1beta1_auth_models_need_a_model_access_secret() -> None:
    builder = make_workspace("serve").inference("llama-3.1-8b-instruct")
    assert fields(builder.obj()) == ["inference.preset.modelAccessSecret"]
    assert validate_workspace(builder.model_access_secret("hf-token").obj()) == []


def test_models_not_downloaded_at_runtime_take_no_access_secret() -> None:
    body = (
        make_workspace("serve").inference("smollm2-135m-instruct").model_access_secret("hf").obj()
    )
    assert fields(body) == ["inference.preset.modelAccessSecret"]


def lookup_with(name: str, data: Mapping[str, str], namespace: str = "default") -> object:
    return offline_config_map_lookup({(namespace, name): data})


def training(config: str) -> dict[str, str]:
    return {"training_config.yaml": config}


@pytest.mark.parametrize(
    ("method", "config", "problem"),
    [
        ("lora", default_tuning_config("qlora"), "must not quantize"),
        ("qlora", default_tuning_config("lora"), "needs QuantizationConfig"),
        (
            "qlora",
            "training_config:\n  Bogus: {}\n  QuantizationConfig: {load_in_4bit: true}\n",
            "unknown",
        ),
        (
            "qlora",
            "training_config:\n  QuantizationConfig: {load_in_4bit: true, load_in_8bit: true}\n",
            "both be true",
        ),
        (
            "lora",
            "training_config:\n  QuantizationConfig: {load_in_4bit: 'yes'}\n",
            "true or false",
        ),
        ("lora", "training_config:\n  TrainingArguments: {output_dir: ../etc}\n", "under /mnt"),
        ("lora", "training_config:\n  TrainingArguments: {output_dir: /mnt}\n", "under /mnt"),
        ("lora", "not: [valid", "not valid YAML"),
        ("lora", "- a list\n", "training_config"),
    ],
)
def test_training_configs_are_checked_against_the_method(
    method: str, config: str, problem: str
) -> None:
    body = make_workspace("tune").tuning(method=method).tuning_config("my-config").obj()
    text = messages(body, config_map_lookup=lookup_with("my-config", training(config)))
    assert "tuning.config" in text and problem in text


def test_a_missing_user_config_map_is_reported_with_its_namespace() -> None:
    body = make_workspace("tune").tuning().tuning_config("nope").obj()
    text = messages(body, config_map_lookup=offline_config_map_lookup())
    assert "'nope' not found in namespace 'default'" in text


def test_default_templates_are_found_in_the_release_namespace() -> None:
    seen: list[tuple[str, str]] = []

    def lookup(namespace: str, name: str) -> Mapping[str, str] | None:
        seen.append((namespace, name))
        return None

    validate_workspace(
        tuning_workspace(method="lora"), config_map_lookup=lookup, release_namespace="kaito"
    )
    assert seen == [("kaito", "lora-params-template")]


def test_inference_config_max_model_len_is_bounded_by_the_model() -> None:
    body = make_workspace("serve").inference().inference_config("cfg").obj()
    too_long = {"inference_config.yaml": "vllm:\n  max-model-len: 999999\n"}
    assert "exceeds" in messages(body, config_map_lookup=lookup_with("cfg", too_long))
    fine = {"inference_config.yaml": "vllm:\n  max-model-len: 4096\n"}
    assert validate_workspace(body, config_map_lookup=lookup_with("cfg", fine)) == []  # type: ignore[arg-type]


def test_structure_errors_come_first_and_stop_nothing_else() -> None:
    body = adding(tuning_workspace(preset="llama-3.1-8b-instruct"), "resource.count", 3)
    assert set(fields(body)) == {"resource.count", "tuning.preset.name"}


def test_sku_suggestions_are_the_smallest_that_fit_on_one_node() -> None:
    preset = get_preset("phi-3-mini-4k-instruct")
    assert preset is not None
    assert suggest_skus(preset, default_skus(), "azure")[0] == "Standard_NV36ads_A10_v5"


def test_updates_that_leave_the_spec_alone_skip_catalog_checks() -> None:
    # E.g. the controller adding a finalizer to a Workspace whose preset left the catalog.
    old = inference_workspace(preset="phi-4", instance_type="Standard_NC6s_v3")
    new = adding(old, "metadata.finalizers", ["workspace.finalizer.kaito.sh"])
    assert validate_workspace(new) != []
    assert validate_workspace(new, old=old) == []


def test_updates_that_change_the_spec_are_checked_in_full() -> None:
    old = tuning_workspace()
    new = with_(old, "tuning.input.urls", ["http://127.0.0.1/x"])
    assert fields(new, old=old) == ["tuning.input.urls[0]"]


def test_tuning_that_likely_runs_out_of_memory_only_warns() -> None:
    body = tuning_workspace(preset="phi-4", method="lora", instance_type="Standard_NC6s_v3")
    assert validate_workspace(body) == []
    warning = next(w for w in workspace_warnings(body) if w.field == "resource.instanceType")
    assert "use qlora" in warning.message and warning.severity == "warning"


def test_the_admission_message_joins_errors_and_leaves_out_warnings() -> None:
    from kaito.api import FieldError
    from kaito.presets.validation import admission_message

    errors = [FieldError("a", "x"), FieldError("b", "y"), FieldError("c", "z", severity="warning")]
    assert admission_message(errors) == "a: x; b: y"


def test_a_workspace_needs_a_name() -> None:
    assert fields(without(inference_workspace(), "metadata.name")) == ["metadata.name"]
