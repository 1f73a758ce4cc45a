"""The inference config file's `vllm:` section: engine arguments the operator reads too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VLLM_SECTION = "vllm"
# The one vllm key the operator interprets (it sizes the workload and is checked at admission).
MAX_MODEL_LEN = "max-model-len"


class InferenceConfigError(ValueError):
    """The document's `vllm:` section cannot be used; the message says why."""


def vllm_section(document: object) -> dict[str, Any]:
    """The `vllm:` mapping of a loaded inference config ({} when the document has none).

    Raises InferenceConfigError when the section is present but not a mapping.
    """
    if not isinstance(document, Mapping):
        return {}
    value = document.get(VLLM_SECTION)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InferenceConfigError(f"`{VLLM_SECTION}` must be a mapping")
    return dict(value)


def max_model_len(section: Mapping[str, Any]) -> int | None:
    """The section's max-model-len when it is an integer (booleans are not)."""
    value = section.get(MAX_MODEL_LEN)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
