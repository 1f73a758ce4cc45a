"""Property tests: admission never crashes, and never admits what the CRD schema rejects."""

from __future__ import annotations

from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaito.api import crd
from kaito.api.validation import without_status
from kaito.presets.validation import validate_workspace, workspace_warnings

from .builders import (
    Body,
    adding,
    inference_workspace,
    legacy_tuning_workspace,
    make_workspace,
    tuning_workspace,
    with_,
    without,
)

VALIDATORS = {
    version["name"]: jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])
    for version in crd.crd()["spec"]["versions"]
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=2000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
# Values near the edges of the rules, more likely to find a disagreement than random text.
edge_values = st.sampled_from(
    [
        "",
        "QLoRA",
        "lora",
        "qlora",
        "ftp://example.com/x",
        "https://example.com/x",
        "http://10.0.0.1/x",
        "UPPER/Repo:1",
        "busybox",
        "busybox\n",
        "a/b:c:d",
        "Standard_NC6s_v3",
        "phi-4",
        "private",
        "public",
        "1.01",
        "0.5",
        "In",
        "NotIn",
        -1,
        0,
        1,
        2,
        101,
        True,
        1.5,
        [],
        {},
        ["x"],
        {"a": "b"},
        [{"source": {"name": "a", "image": "r.io/a:1"}}],
    ]
)
paths = st.sampled_from(
    [
        "metadata.name",
        "resource",
        "resource.count",
        "resource.instanceType",
        "resource.labelSelector",
        "resource.labelSelector.matchLabels",
        "resource.labelSelector.matchExpressions",
        "resource.partition",
        "resource.preferredNodes",
        "inference",
        "inference.preset",
        "inference.preset.name",
        "inference.preset.accessMode",
        "inference.preset.presetOptions",
        "inference.template",
        "inference.config",
        "inference.adapters",
        "tuning",
        "tuning.method",
        "tuning.config",
        "tuning.preset",
        "tuning.input",
        "tuning.input.urls",
        "tuning.input.image",
        "tuning.input.name",
        "tuning.input.volumeSource",
        "tuning.output",
        "tuning.output.image",
        "tuning.output.imagePushSecret",
        "tuning.output.volumeSource",
        "status",
        "status.conditions",
        "status.tuning",
        "apiVersion",
        "kind",
    ]
)
bases = st.sampled_from(
    [
        legacy_tuning_workspace(),
        tuning_workspace(),
        tuning_workspace(version="v1alpha1", method="lora"),
        inference_workspace(),
        inference_workspace(version="v1alpha1"),
        make_workspace("serve-phi-3").inference().adapter("a").adapter("b").obj(),
    ]
)


@st.composite
def workspaces(draw: st.DrawFn) -> Body:
    body = draw(bases)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        path = draw(paths)
        try:
            if draw(st.booleans()) and draw(st.booleans()):
                body = without(body, path)
            else:
                value = draw(edge_values | json_values)
                try:
                    body = with_(body, path, value)
                except KeyError:  # not in this body yet: add it (its parent must exist)
                    body = adding(body, path, value)
        except (KeyError, TypeError, IndexError, AttributeError):
            continue
    return body


def pruned(value: Any) -> Any:
    """Drop null object fields, as the apiserver does before validating non-nullable fields."""
    if isinstance(value, dict):
        return {k: pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def schema_rejects(body: Any) -> bool:
    version = str(body.get("apiVersion", "")).rsplit("/", 1)[-1]
    validator = VALIDATORS.get(version)
    # Writes to the main resource ignore `status` (status subresource), so does admission.
    written = pruned(without_status(body))
    return validator is not None and any(True for _ in validator.iter_errors(written))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workspaces())
def test_admission_rejects_whatever_the_crd_schema_rejects(body: Body) -> None:
    errors = validate_workspace(body)
    if schema_rejects(body):
        assert errors, "the CRD schema rejects this body but validate_workspace admitted it"


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_admission_never_raises_on_arbitrary_json(body: Any) -> None:
    errors = validate_workspace(body)
    assert isinstance(errors, list)
    assert isinstance(workspace_warnings(body), list)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workspaces())
def test_every_error_names_a_field_and_says_something(body: Body) -> None:
    for error in validate_workspace(body):
        assert error.field and error.message and error.severity == "error"


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workspaces())
def test_an_admitted_workspace_is_admitted_again_after_a_storage_round_trip(body: Body) -> None:
    from kaito.api import convert

    if validate_workspace(body):
        return  # most mutations break the body; the valid ones are what this property is about
    stored = convert(body, "v1beta1")
    assert validate_workspace(stored) == []
    assert validate_workspace(convert(stored, "v1alpha1")) == []
