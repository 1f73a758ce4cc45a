"""Upstream KAITO's tuning config (`training_config:` with six sections), parsed and validated."""

from __future__ import annotations

import dataclasses
import importlib.resources
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from kaito.contract.files import DEFAULT_OUTPUT_DIR, MOUNT_ROOT
from kaito.contract.training import (
    COLLATOR,
    DATASET,
    LORA,
    MODEL,
    QUANTIZATION,
    TOP_KEY,
    TRAINING_ARGUMENTS,
    TrainingConfigError,
    training_sections,
)

DEFAULT_MODEL_PATH = "/workspace/tfs/weights"
TORCH_DTYPES = ("float16", "bfloat16", "float32", "float64", "half", "float", "auto")
Method = Literal["lora", "qlora"]
_T = TypeVar("_T")


class ConfigError(ValueError):
    """The tuning config cannot be used as written; the message names the offending key."""


@dataclass(frozen=True)
class ModelConfig:
    """Where the base model comes from and how it loads (upstream `ModelConfig`)."""

    pretrained_model_name_or_path: str = DEFAULT_MODEL_PATH
    state_dict: dict[str, Any] | None = None
    cache_dir: str | None = None
    force_download: bool = False
    proxies: dict[str, str] | None = None
    output_loading_info: bool = False
    local_files_only: bool = False
    revision: str = "main"
    trust_remote_code: bool = False
    torch_dtype: str | None = None
    device_map: str | dict[str, Any] | None = "auto"
    chat_template: str | None = None

    def tokenizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `AutoTokenizer.from_pretrained` (no dtype, no template)."""
        return {
            "revision": self.revision,
            "cache_dir": self.cache_dir,
            "local_files_only": self.local_files_only,
            "trust_remote_code": self.trust_remote_code,
            "force_download": self.force_download,
        }


@dataclass(frozen=True)
class DatasetConfig:
    """Which file and columns hold the data, and how it splits (upstream `DatasetConfig`).

    Upstream accepted the three column fields but ignored them; here they map columns.
    `response_column` defaults to "text", which together with no other column means "detect".
    """

    dataset_path: str | None = None
    dataset_extension: str | None = None
    shuffle_dataset: bool = True
    shuffle_seed: int = 42
    context_column: str | None = None
    response_column: str = "text"
    messages_column: str | None = None
    train_test_split: float = 0.8


@dataclass(frozen=True)
class TuningConfig:
    """A parsed config: typed sections for ours, validated keyword dicts for library ones."""

    model: ModelConfig = field(default_factory=ModelConfig)
    quantization: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    collator: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def method(self) -> Method:
        """QLoRA iff the quantization section asks for 4- or 8-bit weights (as upstream)."""
        quantized = self.quantization.get("load_in_4bit") or self.quantization.get("load_in_8bit")
        return "qlora" if quantized else "lora"

    def output_dir(self) -> Path:
        """The results directory: `TrainingArguments.output_dir`, relative paths under /mnt."""
        raw = str(self.training.get("output_dir") or DEFAULT_OUTPUT_DIR)
        path = Path(raw)
        return path if path.is_absolute() else Path(MOUNT_ROOT) / path

    def replace(self, **changes: Any) -> TuningConfig:
        return dataclasses.replace(self, **changes)

    def with_training(self, **overrides: Any) -> TuningConfig:
        """A copy whose TrainingArguments has `overrides` applied (flags win over the file)."""
        merged = dict(self.training)
        merged.update({k: v for k, v in overrides.items() if v is not None})
        _check_keys(TRAINING_ARGUMENTS, merged, _sft_fields())
        return dataclasses.replace(self, training=merged)


def template_path(method: Method) -> Path:
    """The packaged default template for `method` (upstream's lora/qlora-params-template)."""
    # One copy for everyone: the operator's ConfigMaps, the chart and this runtime read the same
    # files, which live with the preset data (kaito.presets is pure and cheap to import).
    resource = (
        importlib.resources.files("kaito.presets")
        / "data"
        / "tuning"
        / f"{method}-params-template.yaml"
    )
    return Path(str(resource))


def template_text(method: Method) -> str:
    """The default template's YAML, exactly as a ConfigMap's `training_config.yaml` holds it."""
    return template_path(method).read_text(encoding="utf-8")


def load_config(source: str | Path | Mapping[str, Any]) -> TuningConfig:
    """Parse a config file, YAML text, or an already-loaded mapping; raise ConfigError on misuse."""
    if isinstance(source, Mapping):
        document: Any = source
    else:
        path = Path(source) if not str(source).lstrip().startswith(TOP_KEY) else None
        text = path.read_text(encoding="utf-8") if path is not None else str(source)
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path or 'config'} is not valid YAML: {exc}") from exc
    try:
        sections = training_sections(document)
    except TrainingConfigError as exc:
        raise ConfigError(str(exc)) from exc
    return _build(sections)


def _build(sections: dict[str, dict[str, Any]]) -> TuningConfig:
    warnings: list[str] = []
    model = _dataclass_section(MODEL, ModelConfig, sections[MODEL])
    if model.torch_dtype is not None and model.torch_dtype not in TORCH_DTYPES:
        raise ConfigError(f"Invalid torch dtype: {model.torch_dtype!r} (ModelConfig.torch_dtype)")
    dataset = _dataclass_section(DATASET, DatasetConfig, sections[DATASET])
    if not 0 < float(dataset.train_test_split) <= 1:
        raise ConfigError(
            "Train/Test split needs to be between 0 and 1 (DatasetConfig.train_test_split is "
            f"{dataset.train_test_split})"
        )

    quantization = sections[QUANTIZATION]
    _check_keys(QUANTIZATION, quantization, _bnb_fields())
    if quantization.get("quant_method", "bitsandbytes") != "bitsandbytes":
        raise ConfigError("QuantizationConfig.quant_method must be 'bitsandbytes'")
    for flag in ("load_in_4bit", "load_in_8bit"):
        if flag in quantization and not isinstance(quantization[flag], bool):
            raise ConfigError(f"QuantizationConfig.{flag} must be true or false")
    if quantization.get("load_in_4bit") and quantization.get("load_in_8bit"):
        raise ConfigError("QuantizationConfig: load_in_4bit and load_in_8bit cannot both be true")

    lora = sections[LORA]
    _check_keys(LORA, lora, _lora_fields())
    if "target_modules" not in lora and os.environ.get("DEFAULT_TARGET_MODULES"):
        lora["target_modules"] = os.environ["DEFAULT_TARGET_MODULES"].split(",")
    lora.setdefault("init_lora_weights", True)

    training = sections[TRAINING_ARGUMENTS]
    _check_keys(TRAINING_ARGUMENTS, training, _sft_fields())
    if training.get("dataset_text_field") not in (None, "text"):
        raise ConfigError(
            "TrainingArguments.dataset_text_field is not used: map columns with "
            "DatasetConfig.response_column / context_column / messages_column instead"
        )

    collator = sections[COLLATOR]
    _check_keys(COLLATOR, collator, _collator_fields())
    if collator.get("mlm"):
        # The upstream templates ask for masked-LM collation, which no causal LM can use;
        # upstream turns it off silently. Accept the templates, but say so.
        warnings.append("DataCollator.mlm does not apply to causal language models; ignored")
    unused = sorted(set(collator) - {"mlm", "pad_to_multiple_of", "return_tensors"})
    if unused:
        warnings.append(f"DataCollator keys {unused} do not apply to causal LM tuning; ignored")
    return TuningConfig(
        model=model,
        quantization=quantization,
        lora=lora,
        training=training,
        dataset=dataset,
        collator=collator,
        warnings=tuple(warnings),
    )


def _dataclass_section(section: str, cls: type[_T], values: dict[str, Any]) -> _T:
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    _check_keys(section, values, set(names))
    for key, value in values.items():
        _check_type(section, key, value, names[key].default)
    return cls(**values)


def _check_type(section: str, key: str, value: Any, default: Any) -> None:
    if value is None or default is None or key == "device_map":
        return
    expected: tuple[type, ...]
    if isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, int):
        expected = (int,)
    elif isinstance(default, float):
        expected = (int, float)
    elif isinstance(default, str):
        expected = (str,)
    else:
        return
    if not isinstance(value, expected) or (expected != (bool,) and isinstance(value, bool)):
        raise ConfigError(
            f"{section}.{key} must be a {expected[-1].__name__}, got {type(value).__name__} "
            f"({value!r})"
        )


def _check_keys(section: str, values: Mapping[str, Any], allowed: set[str]) -> None:
    for key in values:
        if key not in allowed:
            raise ConfigError(f"unknown key {section}.{key} in {TOP_KEY}")


def _sft_fields() -> set[str]:
    from trl import SFTConfig

    return {f.name for f in dataclasses.fields(SFTConfig) if f.init}


def _lora_fields() -> set[str]:
    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig) if f.init}


def _bnb_fields() -> set[str]:
    from transformers import BitsAndBytesConfig

    params = set(inspect.signature(BitsAndBytesConfig.__init__).parameters)
    return (params - {"self", "kwargs"}) | {"quant_method"}


def _collator_fields() -> set[str]:
    from transformers import DataCollatorForLanguageModeling

    return {f.name for f in dataclasses.fields(DataCollatorForLanguageModeling)} - {"tokenizer"}
