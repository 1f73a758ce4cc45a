"""Serving errors travel as exceptions, and the HTTP layer's functions are typed without Any."""

from __future__ import annotations

import ast
from pathlib import Path

import kaito.runtime.inference as package

ROOT = Path(package.__file__).parent


def parsed(name: str) -> ast.Module:
    return ast.parse((ROOT / name).read_text())


def test_no_module_checks_whether_a_value_is_a_serving_error() -> None:
    found = []
    for path in sorted(ROOT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "isinstance"
                and "ServingError" in ast.unparse(node.args[1])
            ):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []


def test_serving_results_are_not_unions_with_errors() -> None:
    for node in ast.walk(parsed("serving.py")):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            returns = ast.unparse(node.returns)
            assert not ("|" in returns and "ServingError" in returns), node.name


def test_router_functions_take_and_return_no_any() -> None:
    untyped = []
    for node in ast.walk(parsed("router.py")):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations = [a.annotation for a in node.args.args + node.args.kwonlyargs]
            for annotation in [*annotations, node.returns]:
                if annotation is not None and ast.unparse(annotation) in ("Any", "object"):
                    untyped.append(f"{node.name}: {ast.unparse(annotation)}")
    assert untyped == []
