"""What the CRD enforces (schema + CEL), checked offline with validate_structure."""

from __future__ import annotations

from typing import Any

import pytest

from kaito.api import rules
from kaito.api.validation import validate_structure

from .builders import (
    Body,
    adapter,
    adding,
    inference_workspace,
    legacy_tuning_workspace,
    make_workspace,
    tuning_workspace,
    with_,
    without,
)

VOLUME = {"persistentVolumeClaim": {"claimName": "data"}}
SERVE = "serve-phi-3"
TUNE = "tune-phi-3"


def fields(errors: list[Any]) -> list[str]:
    return [e.field for e in errors]


@pytest.mark.parametrize(
    "body",
    [
        legacy_tuning_workspace(),
        tuning_workspace(),
        tuning_workspace(method="lora"),
        inference_workspace(),
        inference_workspace(version="v1alpha1"),
        make_workspace(SERVE).inference().adapter("a").adapter("b").obj(),
        make_workspace(TUNE).tuning().data_image("busybox").output_volume(VOLUME).obj(),
        make_workspace(SERVE)
        .inference()
        .label_selector({"matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]})
        .obj(),
        make_workspace(SERVE).template({"spec": {}}).obj(),
        make_workspace(SERVE).inference().adapter(strength="0.25").obj(),
        make_workspace(SERVE).inference().partition("accelerator", count=2).obj(),
        make_workspace(TUNE)
        .tuning()
        .output_image("myregistry.azurecr.io/adapters/phi@sha256:" + "a" * 64)
        .obj(),
    ],
    ids=[
        "legacy",
        "tuning-qlora",
        "tuning-lora",
        "inference",
        "inference-v1alpha1",
        "two-adapters",
        "image-input-volume-output",
        "match-expression-in",
        "template",
        "adapter-strength",
        "accelerator-partition",
        "digest-image",
    ],
)
def test_valid_workspaces_pass(body: Body) -> None:
    assert validate_structure(body) == []


INVALID: list[tuple[str, Body, str]] = [
    ("neither inference nor tuning", without(inference_workspace(), "inference"), "inference"),
    (
        "both inference and tuning",
        adding(inference_workspace(), "tuning", tuning_workspace()["tuning"]),
        "tuning",
    ),
    ("tuning on two nodes", adding(tuning_workspace(), "resource.count", 2), "resource.count"),
    ("tuning with two replicas", adding(tuning_workspace(), "spec", {"replicas": 2}), "spec"),
    (
        "two multi-node replicas",
        adding(make_workspace(SERVE).inference().count(2).obj(), "spec", {"replicas": 2}),
        "spec",
    ),
    ("zero nodes", adding(inference_workspace(), "resource.count", 0), "resource.count"),
    ("too many nodes", adding(inference_workspace(), "resource.count", 1000), "resource.count"),
    ("unknown method", with_(tuning_workspace(), "tuning.method", "full"), "tuning.method"),
    ("mixed-case method", with_(tuning_workspace(), "tuning.method", "QLoRA"), "tuning.method"),
    ("missing method", without(tuning_workspace(), "tuning.method"), "tuning.method"),
    ("missing input", without(tuning_workspace(), "tuning.input"), "tuning.input"),
    ("missing output", without(tuning_workspace(), "tuning.output"), "tuning.output"),
    ("no input source", without(tuning_workspace(), "tuning.input.urls"), "tuning.input"),
    ("empty url list", with_(tuning_workspace(), "tuning.input.urls", []), "tuning.input"),
    (
        "two input sources",
        adding(tuning_workspace(), "tuning.input.image", "registry.example.com/data:1"),
        "tuning.input",
    ),
    (
        "output image without push secret",
        without(tuning_workspace(), "tuning.output.imagePushSecret"),
        "tuning.output.imagePushSecret",
    ),
    (
        "output image and volume",
        adding(tuning_workspace(), "tuning.output.volumeSource", VOLUME),
        "tuning.output",
    ),
    (
        "ftp url",
        with_(tuning_workspace(), "tuning.input.urls", ["ftp://x/y"]),
        "tuning.input.urls[0]",
    ),
    (
        "image without repo",
        with_(tuning_workspace(), "tuning.output.image", "UPPER"),
        "tuning.output.image",
    ),
    (
        "no label selector",
        without(inference_workspace(), "resource.labelSelector"),
        "resource.labelSelector",
    ),
    (
        "empty label selector",
        with_(inference_workspace(), "resource.labelSelector", {"matchLabels": {}}),
        "resource.labelSelector.matchLabels",
    ),
    (
        "NotIn expression",
        adding(
            inference_workspace(),
            "resource.labelSelector.matchExpressions",
            [{"key": "app", "operator": "NotIn", "values": ["x"]}],
        ),
        "resource.labelSelector.matchExpressions[0].operator",
    ),
    (
        "no preset nor template",
        without(inference_workspace(), "inference.preset"),
        "inference.preset",
    ),
    (
        "preset and template",
        adding(inference_workspace(), "inference.template", {"spec": {}}),
        "inference.template",
    ),
    (
        "preset without name",
        with_(inference_workspace(), "inference.preset", {}),
        "inference.preset.name",
    ),
    (
        "private access without image",
        adding(inference_workspace(), "inference.preset.accessMode", "private"),
        "inference.preset.presetOptions",
    ),
    (
        "bad access mode",
        adding(inference_workspace(), "inference.preset.accessMode", "open"),
        "inference.preset.accessMode",
    ),
    (
        "eleven adapters",
        adding(inference_workspace(), "inference.adapters", [adapter(f"a{i}") for i in range(11)]),
        "inference.adapters",
    ),
    (
        "duplicate adapters",
        adding(inference_workspace(), "inference.adapters", [adapter("a"), adapter("a")]),
        "inference.adapters",
    ),
    (
        "adapter without name",
        adding(inference_workspace(), "inference.adapters", [{"source": {"image": "r.io/a:1"}}]),
        "inference.adapters[0].source",
    ),
    (
        "adapter without image or volume",
        adding(inference_workspace(), "inference.adapters", [{"source": {"name": "a"}}]),
        "inference.adapters[0].source",
    ),
    (
        "adapter from urls",
        adding(
            inference_workspace(),
            "inference.adapters",
            [{"source": {"name": "a", "image": "r.io/a:1", "urls": ["https://x.io/a"]}}],
        ),
        "inference.adapters[0].source",
    ),
    (
        "adapter strength above one",
        adding(inference_workspace(), "inference.adapters", [adapter(strength="1.5")]),
        "inference.adapters[0].strength",
    ),
    (
        "adapter name not DNS",
        adding(inference_workspace(), "inference.adapters", [adapter("My_Adapter")]),
        "inference.adapters[0].source.name",
    ),
    (
        "adapters on a template",
        adding(
            make_workspace(SERVE).template({"spec": {}}).obj(), "inference.adapters", [adapter()]
        ),
        "inference.adapters",
    ),
    (
        "mig partition with count",
        adding(inference_workspace(), "resource.partition", {"mode": "mig", "count": 1}),
        "resource.partition",
    ),
    (
        "partition for tuning",
        adding(tuning_workspace(), "resource.partition", {"mode": "accelerator", "count": 1}),
        "resource.partition",
    ),
    ("unknown field", adding(inference_workspace(), "inference.presets", {}), "inference.presets"),
    ("string count", adding(inference_workspace(), "resource.count", "1"), "resource.count"),
    ("bad apiVersion", with_(inference_workspace(), "apiVersion", "kaito.sh/v1"), "apiVersion"),
    ("bad kind", with_(inference_workspace(), "kind", "Work"), "kind"),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in INVALID], ids=[i for i, _, _ in INVALID]
)
def test_invalid_workspaces_fail_naming_the_field(body: Body, field: str) -> None:
    errors = validate_structure(body)
    assert errors, "expected a validation error"
    assert any(e.field.startswith(field) for e in errors), fields(errors)
    assert all(e.message for e in errors)


def test_a_non_mapping_body_is_an_error_not_an_exception() -> None:
    assert fields(validate_structure(["not", "a", "workspace"])) == ["(root)"]


UPDATES: list[tuple[str, Body, Body, str]] = [
    (
        "instance type",
        tuning_workspace(),
        with_(tuning_workspace(), "resource.instanceType", "Standard_NC96ads_A100_v4"),
        "resource.instanceType",
    ),
    (
        "count",
        inference_workspace(),
        make_workspace(SERVE).inference().count(2).obj(),
        "resource.count",
    ),
    (
        "label selector",
        inference_workspace(),
        with_(inference_workspace(), "resource.labelSelector.matchLabels.app", "other"),
        "resource.labelSelector",
    ),
    (
        "inference preset",
        inference_workspace(),
        with_(inference_workspace(), "inference.preset.name", "phi-4"),
        "inference.preset",
    ),
    (
        "tuning preset",
        tuning_workspace(),
        with_(tuning_workspace(), "tuning.preset.name", "phi-4"),
        "tuning.preset",
    ),
    ("tuning method", tuning_workspace(), tuning_workspace(method="lora"), "tuning.method"),
    (
        "input name",
        make_workspace(TUNE).tuning().data_name("data").obj(),
        make_workspace(TUNE).tuning().data_name("other").obj(),
        "tuning.input.name",
    ),
    (
        "partition",
        make_workspace(SERVE).inference().partition("mig", profile="1g.10gb").obj(),
        make_workspace(SERVE).inference().partition("mig", profile="2g.20gb").obj(),
        "resource.partition",
    ),
    (
        "tuning swapped for inference",
        tuning_workspace(name="swap"),
        inference_workspace(name="swap"),
        "inference",
    ),
    (
        "template toggled on",
        inference_workspace(),
        make_workspace(SERVE).template({"spec": {}}).obj(),
        "inference.",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "field"), [(o, n, f) for _, o, n, f in UPDATES], ids=[i for i, *_ in UPDATES]
)
def test_immutable_fields_cannot_change_on_update(old: Body, new: Body, field: str) -> None:
    assert validate_structure(new) == [] or field.startswith("inference.")
    errors = validate_structure(new, old=old)
    assert any(e.field.startswith(field) for e in errors), fields(errors)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            tuning_workspace(),
            with_(tuning_workspace(), "tuning.input.urls", ["https://example.com/2.parquet"]),
        ),
        (
            tuning_workspace(),
            with_(tuning_workspace(), "tuning.output.image", "registry.example.com/b:2"),
        ),
        (inference_workspace(), make_workspace(SERVE).inference().adapter().obj()),
        (inference_workspace(), make_workspace(SERVE).inference().inference_config("cfg").obj()),
        (inference_workspace(), make_workspace(SERVE).inference().annotation("a", "b").obj()),
    ],
    ids=["input-urls", "output-image", "adapters", "config", "annotations"],
)
def test_mutable_fields_may_change_on_update(old: Body, new: Body) -> None:
    assert validate_structure(new, old=old) == []


def test_tuning_cannot_be_swapped_for_inference_on_update() -> None:
    errors = validate_structure(inference_workspace(), old=tuning_workspace())
    assert {"inference", "tuning"} <= set(fields(errors))


def test_every_cel_rule_is_exercised_by_an_invalid_case_above() -> None:
    from kaito.api.validation import validate_structure as check

    seen = set()
    for _, body, _ in INVALID:
        seen |= {e.message for e in check(body)}
    for _, old, new, _ in UPDATES:
        seen |= {e.message for e in check(new, old=old)}
    missing = [rule.rule for rule in rules.RULES if rule.message not in seen]
    assert missing == []


def test_status_is_ignored_on_writes_like_the_status_subresource_does() -> None:
    assert validate_structure(adding(inference_workspace(), "status", "garbage")) == []
