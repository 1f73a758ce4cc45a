"""The runtime's modules form no import cycle and never import each other's private names."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
RUNTIME = SRC / "kaito" / "runtime"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(RUNTIME.rglob("*.py"))}


def _resolve(module: str, package: str, level: int) -> str:
    if level == 0:
        return module
    base = package.split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(name: str) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import in the module, lazy ones too:
    an import inside a function still ties the two modules together. Like other cycle
    checkers, a module's parent packages are not counted as imported by it."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module or "", package, node.level)
            names = [alias.name for alias in node.names]
            # `from package import module` imports that module, not the package's names.
            submodules = [n for n in names if f"{target}.{n}" in MODULES]
            found += [(f"{target}.{n}", []) for n in submodules]
            if len(submodules) < len(names):
                found.append((target, [n for n in names if n not in submodules]))
    return found


def runtime_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        targets = {target for target, _ in imports_of(name)}
        graph[name] = {t for t in targets if t in MODULES and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for following in sorted(graph[node]):
            if state.get(following) == 1:
                return [*stack[stack.index(following) :], following]
            if following not in state and (cycle := visit(following)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_checker_finds_a_cycle_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_runtime_has_no_import_cycle() -> None:
    graph = runtime_graph()
    assert "kaito.runtime.oci.registry" in graph, "the walk found the runtime modules"
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_runtime_module_imports_another_modules_private_names() -> None:
    offending = [
        f"{name} imports {target}.{imported}"
        for name in MODULES
        for target, names in imports_of(name)
        if target.startswith("kaito.") and target != name
        for imported in names
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert offending == []


def test_the_oci_layers_import_only_downwards() -> None:
    order = [
        "kaito.runtime.oci.registry",
        "kaito.runtime.oci.blobs",
        "kaito.runtime.oci.image",
        "kaito.runtime.oci.adapter",
    ]
    graph = runtime_graph()
    for index, name in enumerate(order):
        oci = {t for t in graph[name] if t.startswith("kaito.runtime.oci.")}
        assert oci <= set(order[:index]), f"{name} imports {sorted(oci - set(order[:index]))}"
    weights = {n: graph[n] for n in graph if n.startswith("kaito.runtime.oci.weights.")}
    assert set(weights) == {
        "kaito.runtime.oci.weights.format",
        "kaito.runtime.oci.weights.cache",
        "kaito.runtime.oci.weights.transfer",
    }
    assert "kaito.runtime.oci.weights.transfer" not in weights["kaito.runtime.oci.weights.cache"]
    for imported in weights.values():
        assert "kaito.runtime.oci.image" not in imported
