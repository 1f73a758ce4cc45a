"""Builders for Workspace bodies in tests: start from a valid object, then change one thing."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
LEGACY_EXAMPLE = REPO / "examples" / "fine-tuning" / "kaito_workspace_tuning_phi_3.yaml"

Body = dict[str, Any]


def legacy_tuning_workspace() -> Body:
    """The original fine-tuning guide's Workspace, read from the checked-in example."""
    body: Body = yaml.safe_load(LEGACY_EXAMPLE.read_text())
    return body


def _workspace(name: str, version: str, instance_type: str | None, **section: Body) -> Body:
    body: Body = {
        "apiVersion": f"kaito.sh/{version}",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": "default"},
        "resource": {"labelSelector": {"matchLabels": {"app": name}}},
        **section,
    }
    if instance_type is not None:
        body["resource"]["instanceType"] = instance_type
    return body


def tuning_workspace(
    *,
    name: str = "tune-phi-3",
    version: str = "v1beta1",
    preset: str = "phi-3-mini-128k-instruct",
    method: str = "qlora",
    instance_type: str | None = "Standard_NC24ads_A100_v4",
) -> Body:
    tuning: Body = {
        "preset": {"name": preset},
        "method": method,
        "input": {"urls": ["https://example.com/data/train.parquet"]},
        "output": {
            "image": "registry.example.com/adapters/phi-3:0.0.1",
            "imagePushSecret": "push",
        },
    }
    return _workspace(name, version, instance_type, tuning=tuning)


def inference_workspace(
    *,
    name: str = "serve-phi-3",
    version: str = "v1beta1",
    preset: str = "phi-3-mini-4k-instruct",
    instance_type: str | None = "Standard_NC24ads_A100_v4",
) -> Body:
    return _workspace(name, version, instance_type, inference={"preset": {"name": preset}})


def adapter(name: str = "my-adapter", **extra: Any) -> Body:
    source: Body = {"name": name, "image": f"registry.example.com/adapters/{name}:1"}
    return {"source": source, **extra}


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    return [int(i) if i else k for k, i in _STEP.findall(path)]


def with_(body: Body, path: str, value: Any) -> Body:
    """A copy of body with the value at a dotted path (`a.b[0].c`) set, creating dicts."""
    out = copy.deepcopy(body)
    steps = _steps(path)
    node: Any = out
    for step in steps[:-1]:
        node = node[step] if isinstance(step, int) else node.setdefault(step, {})
    node[steps[-1]] = value
    return out


def without(body: Body, path: str) -> Body:
    """A copy of body with the field at a dotted path removed."""
    out = copy.deepcopy(body)
    steps = _steps(path)
    node: Any = out
    for step in steps[:-1]:
        node = node[step]
    del node[steps[-1]]
    return out
