"""Adapter names the server accepts: its pattern over the whole name, line breaks included."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaito.runtime.inference.adapters import AdapterError, AdapterSpec, validate


@pytest.mark.parametrize("name", ["velora\n", "velora\r\n", "velora\n/../x", "a" * 129])
def test_a_name_the_pattern_does_not_cover_whole_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="must match"):
        validate(AdapterSpec(name=name, path=tmp_path), None, [])


def test_a_valid_name_passes_the_name_check(tmp_path: Path) -> None:
    # Just inside: 128 characters; the next check (the adapter's files) is what refuses it.
    with pytest.raises(AdapterError, match="does not exist"):
        validate(AdapterSpec(name="v" * 128, path=tmp_path), None, [])
