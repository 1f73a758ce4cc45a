"""The tuning config file's shape: one top-level key and six sections (upstream KAITO)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TOP_KEY = "training_config"
MODEL = "ModelConfig"
QUANTIZATION = "QuantizationConfig"
LORA = "LoraConfig"
TRAINING_ARGUMENTS = "TrainingArguments"
DATASET = "DatasetConfig"
COLLATOR = "DataCollator"
SECTIONS = (MODEL, QUANTIZATION, LORA, TRAINING_ARGUMENTS, DATASET, COLLATOR)
# The TrainingArguments key that names the results directory.
OUTPUT_DIR_KEY = "output_dir"


class TrainingConfigError(ValueError):
    """The document is not a training config; the message names the offending key."""


def training_sections(document: object) -> dict[str, dict[str, Any]]:
    """Every section of a loaded config document ({} for an absent one).

    Raises TrainingConfigError for a missing or extra top-level key, an unknown section,
    or a section that is not a mapping.
    """
    if not isinstance(document, Mapping) or TOP_KEY not in document:
        raise TrainingConfigError(f"the config must have a top-level `{TOP_KEY}:` key")
    extra = [k for k in document if k != TOP_KEY]
    if extra:
        raise TrainingConfigError(
            f"unknown top-level key {extra[0]!r}: only `{TOP_KEY}` is allowed"
        )
    body = document[TOP_KEY] or {}
    if not isinstance(body, Mapping):
        raise TrainingConfigError(f"`{TOP_KEY}` must be a mapping of sections")
    for name in body:
        if name not in SECTIONS:
            raise TrainingConfigError(
                f"unknown section {TOP_KEY}.{name}; allowed sections: {', '.join(SECTIONS)}"
            )
    sections: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        value = body.get(name) or {}
        if not isinstance(value, Mapping):
            raise TrainingConfigError(
                f"{TOP_KEY}.{name} must be a mapping, got {type(value).__name__}"
            )
        sections[name] = dict(value)
    return sections


def section(document: object, name: str) -> Mapping[str, Any]:
    """One section of a loaded document, leniently: {} when anything on the way is missing
    or not a mapping (for readers that fall back to defaults instead of failing)."""
    body = document.get(TOP_KEY) if isinstance(document, Mapping) else None
    value = body.get(name) if isinstance(body, Mapping) else None
    return value if isinstance(value, Mapping) else {}
