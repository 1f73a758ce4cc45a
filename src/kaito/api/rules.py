"""CEL admission rules of the Workspace CRD, each paired with the same rule in Python.

One table feeds both the generated CRD (x-kubernetes-validations) and the offline validator,
so `kaito validate` and the apiserver agree. Python predicates see the defaulted JSON body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Check = Callable[[dict[str, Any]], bool]
Transition = Callable[[dict[str, Any], dict[str, Any]], bool]


@dataclass(frozen=True)
class CelRule:
    """A CEL rule at a schema node, with its Python twin.

    `path` addresses the node from the root ("*" = each list item). `field` is the offending
    field relative to that node (also CEL's fieldPath). Exactly one of `check` (self only) or
    `transition` (self and oldSelf; update only) is set.
    """

    path: tuple[str, ...]
    rule: str
    message: str
    field: str = ""
    reason: str = "FieldValueInvalid"
    check: Check | None = None
    transition: Transition | None = None

    def to_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field:
            out["fieldPath"] = self.field
        out["reason"] = self.reason
        return out


def _has(obj: Any, key: str) -> bool:
    return isinstance(obj, dict) and key in obj


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


def _nonempty_list(obj: Any, key: str) -> bool:
    value = _get(obj, key)
    return isinstance(value, list) and len(value) > 0


def _same_optional(new: Any, old: Any, key: str) -> bool:
    """Unchanged when set on both sides (CEL: !has(self.k) || !has(oldSelf.k) || equal)."""
    return not _has(new, key) or not _has(old, key) or new[key] == old[key]


def _unique_adapter_names(adapters: list[Any]) -> bool:
    names = [_get(_get(a, "source"), "name") for a in adapters]
    present = [n for n in names if n is not None]
    return len(present) == len(set(present))


def _input_sources(source: dict[str, Any]) -> int:
    return (
        int(_nonempty_list(source, "urls"))
        + int(_has(source, "image"))
        + int(_has(source, "volumeSource"))
    )


def _partition_ok(p: dict[str, Any]) -> bool:
    if p.get("mode") == "mig":
        return _has(p, "profile") and not _has(p, "count")
    return _has(p, "count") and not _has(p, "profile")


def _selector_nonempty(s: dict[str, Any]) -> bool:
    return _nonempty_list(s, "matchExpressions") or bool(_get(s, "matchLabels"))


ROOT: tuple[str, ...] = ()
RESOURCE = ("resource",)
INFERENCE = ("inference",)
TUNING = ("tuning",)

RULES: tuple[CelRule, ...] = (
    # --- whole object (no spec wrapper: these sit on the root schema) ---
    CelRule(
        ROOT,
        "!has(self.spec) || !has(self.spec.replicas) || self.spec.replicas <= 1 "
        "|| (has(self.inference) && (!has(self.resource) || !has(self.resource.count) "
        "|| self.resource.count <= 1))",
        "spec.replicas above 1 needs inference on one node per replica (tuning runs one Job, "
        "resource.count above 1 is one multi-node replica): set spec.replicas to 1",
        field=".spec.replicas",
        check=lambda s: (
            not _has(_get(s, "spec"), "replicas")
            or s["spec"]["replicas"] is None
            or s["spec"]["replicas"] <= 1
            or (
                _has(s, "inference")
                and (
                    not _has(_get(s, "resource"), "count")
                    or s["resource"]["count"] is None
                    or s["resource"]["count"] <= 1
                )
            )
        ),
    ),
    CelRule(
        ROOT,
        "has(self.inference) || has(self.tuning)",
        "set exactly one of 'inference' (serve a model) or 'tuning' (fine-tune one); "
        "neither is set",
        field=".inference",
        reason="FieldValueRequired",
        check=lambda s: _has(s, "inference") or _has(s, "tuning"),
    ),
    CelRule(
        ROOT,
        "!(has(self.inference) && has(self.tuning))",
        "'inference' and 'tuning' cannot both be set: keep one and put the other in a "
        "second Workspace",
        field=".tuning",
        reason="FieldValueForbidden",
        check=lambda s: not (_has(s, "inference") and _has(s, "tuning")),
    ),
    CelRule(
        ROOT,
        "has(self.inference) == has(oldSelf.inference)",
        "'inference' cannot be added or removed after creation: create a new Workspace",
        field=".inference",
        reason="FieldValueForbidden",
        transition=lambda s, o: _has(s, "inference") == _has(o, "inference"),
    ),
    CelRule(
        ROOT,
        "has(self.tuning) == has(oldSelf.tuning)",
        "'tuning' cannot be added or removed after creation: create a new Workspace",
        field=".tuning",
        reason="FieldValueForbidden",
        transition=lambda s, o: _has(s, "tuning") == _has(o, "tuning"),
    ),
    CelRule(
        ROOT,
        "!has(self.tuning) || !has(self.resource) || !has(self.resource.count) "
        "|| self.resource.count <= 1",
        "resource.count must be 1 for tuning (multi-node tuning is not supported): "
        "remove resource.count or set it to 1",
        field=".resource.count",
        check=lambda s: (
            not _has(s, "tuning")
            or not _has(_get(s, "resource"), "count")
            or s["resource"]["count"] <= 1
        ),
    ),
    CelRule(
        ROOT,
        "!has(self.tuning) || !has(self.resource) || !has(self.resource.partition)",
        "resource.partition is not supported for tuning: remove it",
        field=".resource.partition",
        reason="FieldValueForbidden",
        check=lambda s: not _has(s, "tuning") or not _has(_get(s, "resource"), "partition"),
    ),
    # --- resource ---
    CelRule(
        RESOURCE,
        "!has(self.count) || !has(oldSelf.count) || self.count == oldSelf.count",
        "resource.count is immutable: delete and recreate the Workspace to change it",
        field=".count",
        transition=lambda s, o: _same_optional(s, o, "count"),
    ),
    CelRule(
        RESOURCE,
        "!has(self.instanceType) || !has(oldSelf.instanceType) || self.instanceType == '' "
        "|| self.instanceType == oldSelf.instanceType",
        "resource.instanceType is immutable: delete and recreate the Workspace to use "
        "another instance type",
        field=".instanceType",
        transition=lambda s, o: _same_optional(s, o, "instanceType") or s.get("instanceType") == "",
    ),
    CelRule(
        RESOURCE,
        "self.labelSelector == oldSelf.labelSelector",
        "resource.labelSelector is immutable: delete and recreate the Workspace to select "
        "other nodes",
        field=".labelSelector",
        transition=lambda s, o: s.get("labelSelector") == o.get("labelSelector"),
    ),
    CelRule(
        RESOURCE,
        "has(self.partition) == has(oldSelf.partition) && (!has(self.partition) "
        "|| self.partition == oldSelf.partition)",
        "resource.partition is immutable: delete and recreate the Workspace to change it",
        field=".partition",
        transition=lambda s, o: s.get("partition") == o.get("partition"),
    ),
    CelRule(
        (*RESOURCE, "labelSelector"),
        "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
        "(has(self.matchExpressions) && size(self.matchExpressions) > 0)",
        "resource.labelSelector selects no nodes: add at least one label to matchLabels, "
        "e.g. {app: my-workspace}",
        field=".matchLabels",
        reason="FieldValueRequired",
        check=_selector_nonempty,
    ),
    CelRule(
        (*RESOURCE, "labelSelector", "matchExpressions", "*"),
        "self.operator == 'In' && has(self.values) && size(self.values) == 1",
        "resource.labelSelector.matchExpressions supports only operator In with exactly "
        "one value: use matchLabels instead",
        field=".operator",
        reason="FieldValueInvalid",
        check=lambda s: (
            s.get("operator") == "In"
            and isinstance(s.get("values"), list)
            and len(s["values"]) == 1
        ),
    ),
    CelRule(
        (*RESOURCE, "partition"),
        "self.mode == 'mig' ? (has(self.profile) && !has(self.count)) "
        ": (has(self.count) && !has(self.profile))",
        "resource.partition: mode mig needs profile (and no count); mode accelerator needs "
        "count (and no profile)",
        check=_partition_ok,
    ),
    # --- inference ---
    CelRule(
        INFERENCE,
        "has(self.preset) || has(self.template)",
        "inference needs a model: set inference.preset.name (see `kaito presets`) or "
        "inference.template (your own pod)",
        field=".preset",
        reason="FieldValueRequired",
        check=lambda s: _has(s, "preset") or _has(s, "template"),
    ),
    CelRule(
        INFERENCE,
        "!(has(self.preset) && has(self.template))",
        "inference.preset and inference.template are mutually exclusive: keep one",
        field=".template",
        reason="FieldValueForbidden",
        check=lambda s: not (_has(s, "preset") and _has(s, "template")),
    ),
    CelRule(
        INFERENCE,
        "!has(self.adapters) || size(self.adapters) == 0 || has(self.preset)",
        "inference.adapters need inference.preset: adapters apply to a preset model",
        field=".adapters",
        reason="FieldValueForbidden",
        check=lambda s: not _nonempty_list(s, "adapters") or _has(s, "preset"),
    ),
    CelRule(
        INFERENCE,
        "has(self.template) == has(oldSelf.template)",
        "inference.template cannot be added or removed after creation: create a new Workspace",
        field=".template",
        reason="FieldValueForbidden",
        transition=lambda s, o: _has(s, "template") == _has(o, "template"),
    ),
    CelRule(
        INFERENCE,
        "has(self.preset) == has(oldSelf.preset) && (!has(self.preset) "
        "|| self.preset == oldSelf.preset)",
        "inference.preset is immutable: create a new Workspace to serve another model",
        field=".preset",
        transition=lambda s, o: s.get("preset") == o.get("preset"),
    ),
    CelRule(
        (*INFERENCE, "preset"),
        "!has(self.accessMode) || self.accessMode != 'private' || "
        "(has(self.presetOptions) && has(self.presetOptions.image))",
        "inference.preset.presetOptions.image is required when accessMode is private: set "
        "it to your private preset image, or use accessMode public",
        field=".presetOptions",
        reason="FieldValueRequired",
        check=lambda s: s.get("accessMode") != "private" or _has(_get(s, "presetOptions"), "image"),
    ),
    CelRule(
        (*INFERENCE, "adapters"),
        "self.all(a, !has(a.source.name) || "
        "size(self.filter(b, has(b.source.name) && b.source.name == a.source.name)) == 1)",
        "inference.adapters[].source.name must be unique: rename the duplicate adapter",
        reason="FieldValueDuplicate",
        check=lambda s: _unique_adapter_names(s) if isinstance(s, list) else True,
    ),
    CelRule(
        (*INFERENCE, "adapters", "*"),
        "has(self.source.name)",
        "inference.adapters[].source.name is required: it names the adapter and its "
        "containers (a DNS-1123 name such as my-adapter)",
        field=".source",
        reason="FieldValueRequired",
        check=lambda s: _has(_get(s, "source"), "name"),
    ),
    CelRule(
        (*INFERENCE, "adapters", "*"),
        "has(self.source.image) != has(self.source.volumeSource)",
        "inference.adapters[].source needs exactly one source: set source.image (an OCI "
        "adapter image) or source.volumeSource",
        field=".source",
        check=lambda s: _has(_get(s, "source"), "image") != _has(_get(s, "source"), "volumeSource"),
    ),
    CelRule(
        (*INFERENCE, "adapters", "*"),
        "!has(self.source.urls)",
        "inference.adapters[].source.urls is not supported: push the adapter as an OCI "
        "image and set source.image",
        field=".source",
        reason="FieldValueForbidden",
        check=lambda s: not _has(_get(s, "source"), "urls"),
    ),
    # --- tuning ---
    CelRule(
        TUNING,
        "self.preset == oldSelf.preset",
        "tuning.preset is immutable: create a new Workspace to tune another model",
        field=".preset",
        transition=lambda s, o: s.get("preset") == o.get("preset"),
    ),
    CelRule(
        TUNING,
        "self.method == oldSelf.method",
        "tuning.method is immutable: create a new Workspace to tune with another method",
        field=".method",
        transition=lambda s, o: s.get("method") == o.get("method"),
    ),
    CelRule(
        (*TUNING, "input"),
        "(has(self.urls) && size(self.urls) > 0 ? 1 : 0) + (has(self.image) ? 1 : 0) "
        "+ (has(self.volumeSource) ? 1 : 0) == 1",
        "tuning.input needs exactly one data source: set one of urls, image or volumeSource",
        check=lambda s: _input_sources(s) == 1,
    ),
    CelRule(
        (*TUNING, "input"),
        "has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)",
        "tuning.input.name is immutable: keep the original name",
        field=".name",
        transition=lambda s, o: s.get("name") == o.get("name"),
    ),
    CelRule(
        (*TUNING, "output"),
        "has(self.image) != has(self.volumeSource)",
        "tuning.output needs exactly one destination: set image (with imagePushSecret) or "
        "volumeSource",
        check=lambda s: _has(s, "image") != _has(s, "volumeSource"),
    ),
    CelRule(
        (*TUNING, "output"),
        "!has(self.image) || has(self.imagePushSecret)",
        "tuning.output.imagePushSecret is required with tuning.output.image: name a "
        "kubernetes.io/dockerconfigjson Secret that can push to that registry",
        field=".imagePushSecret",
        reason="FieldValueRequired",
        check=lambda s: not _has(s, "image") or _has(s, "imagePushSecret"),
    ),
)


def _nodes(obj: Any, path: tuple[str, ...], prefix: str) -> Iterator[tuple[str, Any]]:
    """Yield (display path, node) for every node at `path`, expanding "*" over list items."""
    if not path:
        yield prefix, obj
        return
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                yield from _nodes(item, rest, f"{prefix}[{i}]")
        return
    if isinstance(obj, dict) and head in obj:
        yield from _nodes(obj[head], rest, f"{prefix}.{head}" if prefix else head)


def _display(node_path: str, field: str) -> str:
    joined = f"{node_path}{field}" if node_path else field.lstrip(".")
    return joined or "(root)"


def evaluate(body: dict[str, Any], old: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Evaluate every rule like the apiserver would; returns (field path, message) pairs.

    Transition rules run only on update and only where the node exists in both objects
    (never on list items, which CEL cannot correlate for atomic lists).
    """
    failures: list[tuple[str, str]] = []
    for rule in RULES:
        check, transition = rule.check, rule.transition
        if check is not None:
            for where, node in _nodes(body, rule.path, ""):
                if not _safe(check, node):
                    failures.append((_display(where, rule.field), rule.message))
        elif transition is not None and old is not None and "*" not in rule.path:
            new_nodes = dict(_nodes(body, rule.path, ""))
            for where, old_node in _nodes(old, rule.path, ""):
                if where in new_nodes and not _safe(transition, new_nodes[where], old_node):
                    failures.append((_display(where, rule.field), rule.message))
    return failures


def _safe(predicate: Callable[..., bool], *args: Any) -> bool:
    # A malformed node makes CEL fail the rule too; mirror that instead of raising.
    try:
        return bool(predicate(*args))
    except (TypeError, KeyError, AttributeError, ValueError):
        return False
