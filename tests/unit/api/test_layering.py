"""The pure layers import in one direction: api imports only itself; presets only api and itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src" / "kaito"
ALLOWED = {"api": ("kaito.api",), "presets": ("kaito.api", "kaito.presets")}


def kaito_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [name for name in found if name == "kaito" or name.startswith("kaito.")]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_pure_layer_imports_only_what_it_may(layer: str) -> None:
    offending = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in sorted((SRC / layer).rglob("*.py"))
        for name in kaito_imports(path)
        if not name.startswith(ALLOWED[layer])
    ]
    assert offending == []


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_every_module_starts_with_a_docstring(layer: str) -> None:
    missing = [
        str(path.relative_to(SRC))
        for path in sorted((SRC / layer).rglob("*.py"))
        if ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert missing == []
