"""Parsing Workspace bodies into models: shape, defaults and the helpers the controller uses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kaito.api import parse_workspace
from kaito.api.workspace import V1ALPHA1_DEFAULT_INSTANCE_TYPE, Workspace

from .builders import (
    adding,
    inference_workspace,
    legacy_tuning_workspace,
    make_workspace,
    tuning_workspace,
    without,
)


def test_the_legacy_workspace_parses_with_resource_and_tuning_at_the_top_level() -> None:
    workspace = parse_workspace(legacy_tuning_workspace())
    assert workspace.version == "v1alpha1"
    assert workspace.instance_type == "Standard_NC6s_v3"
    assert workspace.tuning is not None
    assert workspace.tuning.method == "qlora"
    assert workspace.tuning.output.image_push_secret == "ACR_REGISTRY_SECRET_HERE"
    assert workspace.resource is not None
    assert workspace.resource.label_selector.as_map() == {"app": "tuning-phi-3"}


def test_count_defaults_to_one_when_resource_is_present() -> None:
    assert parse_workspace(legacy_tuning_workspace()).to_body()["resource"]["count"] == 1


def test_a_missing_resource_means_one_node() -> None:
    workspace = parse_workspace(without(inference_workspace(), "resource"))
    assert workspace.resource is None
    assert workspace.node_count == 1


def test_access_mode_defaults_to_public() -> None:
    body = parse_workspace(inference_workspace()).to_body()
    assert body["inference"]["preset"]["accessMode"] == "public"


def test_v1alpha1_defaults_the_instance_type_but_v1beta1_does_not() -> None:
    alpha = parse_workspace(
        without(inference_workspace(version="v1alpha1"), "resource.instanceType")
    )
    beta = parse_workspace(without(inference_workspace(version="v1beta1"), "resource.instanceType"))
    assert alpha.instance_type == V1ALPHA1_DEFAULT_INSTANCE_TYPE
    assert beta.instance_type == ""


@pytest.mark.parametrize(
    ("method", "config", "expected"),
    [
        ("qlora", None, "qlora-params-template"),
        ("lora", None, "lora-params-template"),
        ("lora", "my-config", "my-config"),
    ],
)
def test_the_training_config_map_defaults_by_method(
    method: str, config: str | None, expected: str
) -> None:
    builder = make_workspace("tune-phi-3").tuning(method=method)
    body = (builder.tuning_config(config) if config else builder).obj()
    workspace = parse_workspace(body)
    assert workspace.tuning is not None
    assert workspace.tuning.config_map_name == expected


def test_an_adapter_without_strength_has_strength_one() -> None:
    body = make_workspace("serve-phi-3").inference().adapter().obj()
    workspace = parse_workspace(body)
    assert workspace.inference is not None and workspace.inference.adapters
    assert workspace.inference.adapters[0].effective_strength == "1.0"


def test_preset_name_is_read_from_inference_or_tuning() -> None:
    assert parse_workspace(inference_workspace()).preset_name == "phi-3-mini-4k-instruct"
    assert parse_workspace(tuning_workspace()).preset_name == "phi-3-mini-128k-instruct"


def test_to_body_is_stable_under_a_second_parse() -> None:
    body = parse_workspace(legacy_tuning_workspace()).to_body()
    assert parse_workspace(body).to_body() == body


def test_schemaless_fields_keep_arbitrary_content() -> None:
    volume = {"persistentVolumeClaim": {"claimName": "data", "readOnly": True}}
    body = make_workspace("tune-phi-3").tuning().data_volume(volume).obj()
    assert parse_workspace(body).to_body()["tuning"]["input"]["volumeSource"] == volume


def test_unknown_fields_are_rejected_like_the_upstream_webhook() -> None:
    with pytest.raises(ValidationError):
        parse_workspace(adding(inference_workspace(), "resource.instancetype", "x"))


def test_a_string_count_is_not_coerced() -> None:
    with pytest.raises(ValidationError):
        parse_workspace(adding(inference_workspace(), "resource.count", "2"))


def test_models_accept_python_field_names_too() -> None:
    workspace = Workspace(api_version="kaito.sh/v1alpha1")
    assert workspace.to_body() == {
        "apiVersion": "kaito.sh/v1alpha1",
        "kind": "Workspace",
        "metadata": {},
    }


def test_status_keeps_tuning_progress_and_unknown_keys() -> None:
    status = {
        "conditions": [{"type": "JobStarted", "status": "True", "reason": "Started"}],
        "targetNodeCount": 1,
        "state": "Running",
        "tuning": {
            "phase": "training",
            "progressPercent": 42,
            "step": 21,
            "totalSteps": 50,
            "loss": 1.25,
        },
        "futureField": {"x": 1},
    }
    workspace = parse_workspace(make_workspace("tune-phi-3").tuning().status(status).obj())
    assert workspace.status is not None
    assert workspace.status.tuning is not None and workspace.status.tuning.progress_percent == 42
    started = workspace.status.condition("JobStarted")
    assert started is not None and started.status == "True"
    assert workspace.to_body()["status"]["futureField"] == {"x": 1}
