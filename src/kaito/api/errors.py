"""Structured admission errors: a field path plus a message that says how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FieldError:
    """One problem with one field; `field` is a dotted path such as `tuning.input.urls[0]`."""

    field: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"
