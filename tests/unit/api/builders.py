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


class WorkspaceBuilder:
    """A valid Workspace body, one typed step at a time (Kueue's MakeWorkload style):

        make_workspace("serve").inference("phi-3-mini-4k-instruct").count(2).obj()

    Every step keeps the body valid for admission's structure rules; an invalid body is a
    valid one changed with `with_`, `adding` or `without`.
    """

    def __init__(self, name: str, namespace: str = "default", version: str = "v1beta1") -> None:
        self._body: Body = {
            "apiVersion": f"kaito.sh/{version}",
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": namespace},
            "resource": {
                "instanceType": "Standard_NC24ads_A100_v4",
                "labelSelector": {"matchLabels": {"app": name}},
            },
        }

    def obj(self) -> Body:
        """The body (a copy: the builder can go on)."""
        return copy.deepcopy(self._body)

    # metadata

    def annotation(self, key: str, value: str) -> WorkspaceBuilder:
        self._body["metadata"].setdefault("annotations", {})[key] = value
        return self

    def label(self, key: str, value: str) -> WorkspaceBuilder:
        self._body["metadata"].setdefault("labels", {})[key] = value
        return self

    def runtime(self, name: str) -> WorkspaceBuilder:
        """The `kaito.sh/runtime` annotation: vllm or transformers."""
        return self.annotation("kaito.sh/runtime", name)

    # resource

    def instance_type(self, value: str | None) -> WorkspaceBuilder:
        """None leaves it to the estimator (v1beta1) or the defaults."""
        if value is None:
            self._body["resource"].pop("instanceType", None)
        else:
            self._body["resource"]["instanceType"] = value
        return self

    def count(self, nodes: int) -> WorkspaceBuilder:
        self._body["resource"]["count"] = nodes
        return self

    def preferred_nodes(self, *names: str) -> WorkspaceBuilder:
        self._body["resource"]["preferredNodes"] = list(names)
        return self

    def match_labels(self, **labels: str) -> WorkspaceBuilder:
        self._body["resource"]["labelSelector"] = {"matchLabels": labels}
        return self

    def label_selector(self, selector: Body) -> WorkspaceBuilder:
        """A whole label selector (matchLabels and/or matchExpressions)."""
        self._body["resource"]["labelSelector"] = copy.deepcopy(selector)
        return self

    def partition(self, mode: str, **fields: Any) -> WorkspaceBuilder:
        """`resource.partition` (v1beta1): mode mig or accelerator, with profile or count."""
        self._body["resource"]["partition"] = {"mode": mode, **fields}
        return self

    def status(self, status: Body) -> WorkspaceBuilder:
        """A status as the controller wrote it (bodies read back from the apiserver)."""
        self._body["status"] = copy.deepcopy(status)
        return self

    # inference

    def inference(self, preset: str = "phi-3-mini-4k-instruct") -> WorkspaceBuilder:
        self._body.pop("tuning", None)
        self._body["inference"] = {"preset": {"name": preset}}
        return self

    def template(self, pod_template: Body) -> WorkspaceBuilder:
        """A custom inference pod instead of a preset."""
        self._body["inference"] = {"template": pod_template}
        return self

    def model_access_secret(self, name: str) -> WorkspaceBuilder:
        self._inference()["preset"]["modelAccessSecret"] = name
        return self

    def inference_config(self, config_map: str) -> WorkspaceBuilder:
        self._inference()["config"] = config_map
        return self

    def adapter_spec(self, spec: Body) -> WorkspaceBuilder:
        """An adapter written out in full (a volume source, pull secrets, ...)."""
        self._inference().setdefault("adapters", []).append(copy.deepcopy(spec))
        return self

    def adapter(self, name: str = "my-adapter", **extra: Any) -> WorkspaceBuilder:
        self._inference().setdefault("adapters", []).append(adapter(name, **extra))
        return self

    # tuning

    def tuning(
        self, preset: str = "phi-3-mini-128k-instruct", method: str = "qlora"
    ) -> WorkspaceBuilder:
        self._body.pop("inference", None)
        self._body["tuning"] = {
            "preset": {"name": preset},
            "method": method,
            "input": {"urls": ["https://example.com/data/train.parquet"]},
            "output": {
                "image": "registry.example.com/adapters/phi-3:0.0.1",
                "imagePushSecret": "push",
            },
        }
        return self

    def tuning_config(self, config_map: str) -> WorkspaceBuilder:
        self._tuning()["config"] = config_map
        return self

    def urls(self, *urls: str) -> WorkspaceBuilder:
        self._tuning()["input"] = {"urls": list(urls)}
        return self

    def data_image(self, reference: str) -> WorkspaceBuilder:
        self._tuning()["input"] = {"image": reference}
        return self

    def data_name(self, name: str) -> WorkspaceBuilder:
        """`tuning.input.name`, beside whichever source the input has."""
        self._tuning()["input"]["name"] = name
        return self

    def data_volume(self, source: Body) -> WorkspaceBuilder:
        self._tuning()["input"] = {"volumeSource": source}
        return self

    def output_image(self, reference: str, push_secret: str = "push") -> WorkspaceBuilder:
        self._tuning()["output"] = {"image": reference, "imagePushSecret": push_secret}
        return self

    def output_volume(self, source: Body) -> WorkspaceBuilder:
        self._tuning()["output"] = {"volumeSource": source}
        return self

    def preset_options(self, **options: Any) -> WorkspaceBuilder:
        self._section()["preset"]["presetOptions"] = options
        return self

    def _inference(self) -> Body:
        assert "inference" in self._body, "call .inference() first"
        section: Body = self._body["inference"]
        return section

    def _tuning(self) -> Body:
        assert "tuning" in self._body, "call .tuning() first"
        section: Body = self._body["tuning"]
        return section

    def _section(self) -> Body:
        return self._tuning() if "tuning" in self._body else self._inference()


def make_workspace(
    name: str, namespace: str = "default", *, version: str = "v1beta1"
) -> WorkspaceBuilder:
    return WorkspaceBuilder(name, namespace, version)


def tuning_workspace(
    *,
    name: str = "tune-phi-3",
    version: str = "v1beta1",
    preset: str = "phi-3-mini-128k-instruct",
    method: str = "qlora",
    instance_type: str | None = "Standard_NC24ads_A100_v4",
) -> Body:
    """The usual tuning body; `make_workspace` for anything more."""
    builder = make_workspace(name, version=version).tuning(preset, method)
    return builder.instance_type(instance_type).obj()


def inference_workspace(
    *,
    name: str = "serve-phi-3",
    version: str = "v1beta1",
    preset: str = "phi-3-mini-4k-instruct",
    instance_type: str | None = "Standard_NC24ads_A100_v4",
) -> Body:
    """The usual inference body; `make_workspace` for anything more."""
    return (
        make_workspace(name, version=version).inference(preset).instance_type(instance_type).obj()
    )


def adapter(name: str = "my-adapter", **extra: Any) -> Body:
    source: Body = {"name": name, "image": f"registry.example.com/adapters/{name}:1"}
    return {"source": source, **extra}


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    return [int(i) if i else k for k, i in _STEP.findall(path)]


def _parent(body: Body, path: str) -> tuple[Any, str | int]:
    """The container holding the last step of `path`, which must exist all the way down."""
    steps = _steps(path)
    node: Any = body
    for depth, step in enumerate(steps[:-1]):
        node = _step(node, step, path, steps[: depth + 1])
    return node, steps[-1]


def _step(node: Any, step: str | int, path: str, walked: list[str | int]) -> Any:
    where = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in walked).lstrip(".")
    if isinstance(step, int):
        if not isinstance(node, list) or not -len(node) <= step < len(node):
            raise KeyError(f"{path}: no item {where} in the body")
        return node[step]
    if not isinstance(node, dict) or step not in node:
        raise KeyError(f"{path}: no field {where} in the body (use adding() for a new one)")
    return node[step]


def with_(body: Body, path: str, value: Any) -> Body:
    """A copy of body with the value at a dotted path (`a.b[0].c`) replaced.

    For invalid bodies; valid ones come from `make_workspace`. The whole path must exist: a
    typo fails here instead of quietly adding a field the test did not mean to add.
    """
    out = copy.deepcopy(body)
    parent, last = _parent(out, path)
    _step(parent, last, path, _steps(path))
    parent[last] = value
    return out


def adding(body: Body, path: str, value: Any) -> Body:
    """A copy of body with a new field at a dotted path: its parent must exist, it must not."""
    out = copy.deepcopy(body)
    parent, last = _parent(out, path)
    if not isinstance(parent, dict) or last in parent:
        raise KeyError(f"{path}: already in the body, or its parent is not a mapping")
    parent[last] = value
    return out


def without(body: Body, path: str) -> Body:
    """A copy of body with the field at a dotted path removed."""
    out = copy.deepcopy(body)
    parent, last = _parent(out, path)
    _step(parent, last, path, _steps(path))
    del parent[last]
    return out
