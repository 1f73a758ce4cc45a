"""The controller's layers import only downwards: operator > k8s > reconcile > manifests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src" / "kaito"
# What each layer may import from kaito besides itself (devcluster: the fake node builder).
ALLOWED = {
    "manifests": {"manifests", "presets", "api", ""},
    "reconcile": {"reconcile", "manifests", "presets", "api"},
    "k8s": {"k8s", "reconcile", "manifests", "presets", "api"},
    "provisioners": {"provisioners", "k8s", "manifests", "presets", "api", "devcluster"},
    "operator": {"operator", "k8s", "reconcile", "manifests", "presets", "api"},
}


def kaito_imports(path: Path) -> set[str]:
    """The kaito sub-packages a module imports ("" for the top-level `kaito`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "kaito":
                found.add(parts[1] if len(parts) > 1 else "")
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    modules = sorted((SRC / layer).rglob("*.py"))
    assert modules, f"no modules in {layer}"
    for module in modules:
        extra = kaito_imports(module) - ALLOWED[layer]
        assert not extra, f"{module.relative_to(SRC)} imports kaito.{sorted(extra)}"


def test_every_module_starts_with_a_docstring() -> None:
    for layer in ALLOWED:
        for module in (SRC / layer).rglob("*.py"):
            tree = ast.parse(module.read_text())
            assert ast.get_docstring(tree), f"{module.relative_to(SRC)} has no module docstring"
