"""v1alpha1 <-> v1beta1 conversion: objects written in one version read back unchanged."""

from __future__ import annotations

import pytest

from kaito.api import convert, parse_workspace

from .builders import inference_workspace, legacy_tuning_workspace, make_workspace, tuning_workspace


def _normalized(body: dict[str, object]) -> dict[str, object]:
    return parse_workspace(body).to_body()


@pytest.mark.parametrize(
    "body",
    [
        legacy_tuning_workspace(),
        inference_workspace(version="v1alpha1"),
        make_workspace("serve-phi-3", version="v1alpha1").inference().adapter(strength="0.5").obj(),
    ],
    ids=["legacy-tuning", "inference", "inference-with-adapter"],
)
def test_a_v1alpha1_object_survives_a_trip_through_v1beta1(body: dict[str, object]) -> None:
    stored = convert(body, "v1beta1")
    assert stored["apiVersion"] == "kaito.sh/v1beta1"
    back = convert(stored, "kaito.sh/v1alpha1")
    assert _normalized(back) == _normalized(body)


def test_v1beta1_only_fields_survive_a_trip_through_v1alpha1() -> None:
    body = (
        make_workspace("serve-phi-3")
        .inference()
        .partition("mig", profile="1g.10gb")
        .model_access_secret("hf-token")
        .status({"state": "Ready", "targetNodeCount": 2})
        .obj()
    )
    back = convert(convert(body, "v1alpha1"), "v1beta1")
    assert _normalized(back) == _normalized(body)


def test_conversion_to_v1beta1_materializes_the_v1alpha1_instance_type_default() -> None:
    body = inference_workspace(version="v1alpha1")
    del body["resource"]["instanceType"]
    assert convert(body, "v1beta1")["resource"]["instanceType"] == "Standard_NC24ads_A100_v4"


def test_conversion_does_not_modify_its_input() -> None:
    body = tuning_workspace()
    before = repr(body)
    convert(body, "v1alpha1")
    assert repr(body) == before


def test_an_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="v2"):
        convert(tuning_workspace(), "v2")
