"""Operator limits at admission: NodeClaims per Workspace and host access in pod templates."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kaito.presets.limits import Limits
from kaito.presets.validation import validate_workspace

from ..api.builders import inference_workspace

JSON = dict[str, Any]


def with_count(count: int, **extra: Any) -> JSON:
    body = inference_workspace(preset="phi-3-mini-4k-instruct", **extra)
    body["resource"]["count"] = count
    return body


def test_the_per_workspace_cap_is_inclusive_and_one_more_is_refused() -> None:
    # transformers: the requested count is what the Workspace gets.
    at_cap = with_count(8)
    at_cap["metadata"]["annotations"] = {"kaito.sh/runtime": "transformers"}
    assert validate_workspace(at_cap) == []
    past = copy.deepcopy(at_cap)
    past["resource"]["count"] = 9
    (error,) = validate_workspace(past)
    assert error.field == "resource.count"
    assert "9 nodes is more than the 8 one Workspace may ask for" in error.message
    assert "KAITO_MAX_NODECLAIMS_PER_WORKSPACE" in error.message


def test_a_count_of_100_is_refused_and_a_raised_cap_admits_it() -> None:
    body = with_count(100)
    body["metadata"]["annotations"] = {"kaito.sh/runtime": "transformers"}
    assert [e.field for e in validate_workspace(body)] == ["resource.count"]
    assert validate_workspace(body, limits=Limits(max_nodeclaims_per_workspace=100)) == []


def test_an_estimate_beyond_the_cap_is_refused_naming_the_node_count() -> None:
    body = inference_workspace(
        preset="llama-3.3-70b-instruct", instance_type="Standard_NC48ads_A100_v4"
    )
    body["metadata"]["annotations"] = {"kaito.sh/bypass-resource-checks": "true"}
    errors = validate_workspace(body, limits=Limits(max_nodeclaims_per_workspace=1))
    assert any(
        e.field == "resource.instanceType" and "more than the 1 nodes" in e.message for e in errors
    ), errors


def template_workspace(spec: JSON) -> JSON:
    body = inference_workspace()
    body["inference"] = {
        "template": {
            "metadata": {"labels": {"app": "mine"}},
            "spec": {"containers": [{"name": "server", "image": "example.com/server:1"}], **spec},
        }
    }
    return body


def container_context(context: JSON) -> JSON:
    return {
        "containers": [
            {"name": "server", "image": "example.com/server:1", "securityContext": context}
        ]
    }


HOST_ACCESS = [
    ({"hostNetwork": True}, "inference.template.spec.hostNetwork"),
    ({"hostPID": True}, "inference.template.spec.hostPID"),
    (
        {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
        "inference.template.spec.volumes[0].hostPath",
    ),
    (
        container_context({"privileged": True}),
        "inference.template.spec.containers[0].securityContext.privileged",
    ),
    (
        container_context({"capabilities": {"add": ["SYS_ADMIN"]}}),
        "inference.template.spec.containers[0].securityContext.capabilities.add",
    ),
]


@pytest.mark.parametrize(("spec", "field"), HOST_ACCESS)
def test_a_template_asking_for_host_access_is_refused_unless_allowed(
    spec: JSON, field: str
) -> None:
    body = template_workspace(spec)
    errors = [e for e in validate_workspace(body) if e.field.startswith("inference.template")]
    assert [e.field for e in errors] == [field]
    assert "KAITO_ALLOW_PRIVILEGED_TEMPLATES" in errors[0].message
    allowed = validate_workspace(body, limits=Limits(allow_privileged_templates=True))
    assert not [e for e in allowed if e.field.startswith("inference.template")]


def test_a_plain_template_and_dropped_capabilities_are_fine() -> None:
    body = template_workspace(
        container_context({"privileged": False, "capabilities": {"drop": ["ALL"]}})
    )
    assert not [e for e in validate_workspace(body) if e.field.startswith("inference.template")]
