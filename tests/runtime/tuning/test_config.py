"""The tuning config reads upstream's schema with its defaults and names every bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kaito.runtime.tuning.config import ConfigError, load_config, template_path, template_text

PHI3_CONFIGMAP = """
training_config:
  ModelConfig:
    torch_dtype: "bfloat16"
    local_files_only: true
    device_map: "auto"
  QuantizationConfig:
    load_in_4bit: true
    bnb_4bit_quant_type: "nf4"
    bnb_4bit_compute_dtype: "bfloat16"
    bnb_4bit_use_double_quant: true
  LoraConfig:
    r: 8
    lora_alpha: 8
    lora_dropout: 0.0
    target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"]
  TrainingArguments:
    output_dir: "/mnt/results"
    ddp_find_unused_parameters: false
    save_strategy: "epoch"
    per_device_train_batch_size: 2
  DataCollator:
    mlm: true
  DatasetConfig:
    shuffle_dataset: true
    train_test_split: 1
"""


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_the_packaged_templates_parse_and_select_their_method(method: str) -> None:
    config = load_config(template_path(method))  # type: ignore[arg-type]
    assert config.method == method
    assert config.output_dir() == Path("/mnt/results")
    assert config.lora["r"] == 8
    assert yaml.safe_load(template_text(method))["training_config"]["DataCollator"] == {"mlm": True}


def test_upstreams_example_configmap_is_accepted_unchanged() -> None:
    config = load_config(PHI3_CONFIGMAP)
    assert config.method == "qlora"
    assert config.lora["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert config.training["save_strategy"] == "epoch"
    assert any("mlm" in warning for warning in config.warnings)


def test_missing_sections_take_upstreams_defaults() -> None:
    config = load_config({"training_config": {}})
    assert config.method == "lora"
    assert config.model.pretrained_model_name_or_path == "/workspace/tfs/weights"
    assert config.model.device_map == "auto"
    assert config.dataset.train_test_split == 0.8
    assert config.dataset.shuffle_seed == 42
    assert config.output_dir() == Path("/mnt/output")


def test_relative_output_dirs_land_under_mnt_as_upstream() -> None:
    config = load_config({"training_config": {"TrainingArguments": {"output_dir": "results"}}})
    assert config.output_dir() == Path("/mnt/results")


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("LoraConfig", "rank"),
        ("TrainingArguments", "learning_rte"),
        ("QuantizationConfig", "load_in_3bit"),
        ("ModelConfig", "model_path"),
        ("DatasetConfig", "dataset_url"),
        ("DataCollator", "mask"),
    ],
)
def test_an_unknown_key_is_an_error_that_names_it(section: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        load_config({"training_config": {section: {key: 1}}})


def test_an_unknown_section_is_an_error_that_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"PeftConfig.*allowed sections"):
        load_config({"training_config": {"PeftConfig": {}}})


def test_four_and_eight_bit_together_are_rejected() -> None:
    with pytest.raises(ConfigError, match="cannot both be true"):
        load_config(
            {
                "training_config": {
                    "QuantizationConfig": {"load_in_4bit": True, "load_in_8bit": True}
                }
            }
        )


@pytest.mark.parametrize("split", [0, 1.5, -0.2])
def test_the_split_must_lie_in_zero_to_one(split: float) -> None:
    with pytest.raises(ConfigError, match="between 0 and 1"):
        load_config({"training_config": {"DatasetConfig": {"train_test_split": split}}})


def test_a_wrongly_typed_value_names_the_key_and_the_type() -> None:
    with pytest.raises(ConfigError, match=r"DatasetConfig\.shuffle_seed must be a int"):
        load_config({"training_config": {"DatasetConfig": {"shuffle_seed": "forty-two"}}})


def test_an_invalid_dtype_is_reported_as_upstream_does() -> None:
    with pytest.raises(ConfigError, match="Invalid torch dtype"):
        load_config({"training_config": {"ModelConfig": {"torch_dtype": "float7"}}})


def test_flags_override_the_file_and_are_checked_too() -> None:
    config = load_config(template_path("lora")).with_training(max_steps=3, learning_rate=None)
    assert config.training["max_steps"] == 3
    assert "learning_rate" not in config.training


def test_default_target_modules_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFAULT_TARGET_MODULES", "k_proj,q_proj")
    assert load_config({"training_config": {}}).lora["target_modules"] == ["k_proj", "q_proj"]
