"""Layers import only downwards, the pure core does no I/O, every module says its role."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "kaito"

# What each sub-package may import from kaito besides itself and the top-level `kaito` ("").
# The runtimes run inside pods and never see the operator; the CLI sits on top of everything.
# The one edge they share is `contract` (file names, mounts, config sections, progress.json),
# which every layer may import and which imports nothing from kaito.
CONTRACT = "contract"
ALLOWED = {
    "api": set(),
    "presets": {"api"},
    "manifests": {"presets", "api"},
    "reconcile": {"manifests", "presets", "api"},
    "k8s": {"reconcile", "manifests", "presets", "api"},
    "provisioners": {"k8s", "reconcile", "manifests", "presets", "api", "devcluster"},
    "operator": {"k8s", "reconcile", "manifests", "presets", "api"},
    "runtime": set(),
    "local": {"runtime", "presets", "api"},
    "devcluster": set(),
}
ALLOWED = {layer: below | {CONTRACT} for layer, below in ALLOWED.items()}
ALLOWED[CONTRACT] = set()
PURE = ("api", "presets", "manifests", "reconcile", CONTRACT)
# Libraries that reach the network, the cluster, processes or a model: not in the pure core.
IO_LIBRARIES = {"lightkube", "kopf", "httpx", "requests", "subprocess", "socket", "torch"}
IO_LIBRARIES |= {"transformers", "oras", "urllib3", "asyncio", "threading"}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def kaito_layers(path: Path) -> set[str]:
    parts = (name.split(".") for name in imported_modules(path))
    return {p[1] if len(p) > 1 else "" for p in parts if p[0] == "kaito"}


def modules_of(layer: str) -> list[Path]:
    modules = sorted((SRC / layer).rglob("*.py"))
    assert modules, f"no modules in {layer}"
    return modules


def test_every_sub_package_has_a_rule() -> None:
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert packages - {"cli"} == set(ALLOWED)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    offending = [
        f"{path.relative_to(SRC)} imports kaito.{name}"
        for path in modules_of(layer)
        for name in sorted(kaito_layers(path) - ALLOWED[layer] - {layer, ""})
    ]
    assert offending == []


@pytest.mark.parametrize("layer", PURE)
def test_the_pure_core_imports_no_io_library(layer: str) -> None:
    offending = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in modules_of(layer)
        for name in sorted(imported_modules(path))
        if name.split(".")[0] in IO_LIBRARIES
    ]
    assert offending == []


def test_every_module_starts_with_a_docstring() -> None:
    missing = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []


def test_only_the_k8s_package_talks_to_the_kubernetes_api() -> None:
    # Elsewhere lightkube may appear only for its error type, to tell API failures apart.
    offending = []
    for path in sorted(SRC.rglob("*.py")):
        if path.is_relative_to(SRC / "k8s"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "lightkube"]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightkube"):
                names = [f"{node.module}.{a.name}" for a in node.names if a.name != "ApiError"]
            else:
                continue
            offending += [f"{path.relative_to(SRC)} imports {name}" for name in names]
    assert offending == []


def test_the_contract_imports_only_the_standard_library() -> None:
    # Runtime images and the operator both install it; nothing may come along with it.
    offending = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in modules_of(CONTRACT)
        for name in sorted(imported_modules(path))
        if name.split(".")[0] not in sys.stdlib_module_names | {"__future__"}
    ]
    assert offending == []


def test_the_layering_rule_catches_a_contract_module_that_imports_kaito(tmp_path: Path) -> None:
    module = tmp_path / "leak.py"
    module.write_text('"""x."""\nfrom kaito.api.workspace import Workspace\nimport yaml\n')
    assert kaito_layers(module) - ALLOWED[CONTRACT] == {"api"}
    assert "yaml" not in sys.stdlib_module_names
