"""The InferenceSet API: the checked-in CRD matches the models, the scale subresource points at
replicas and selector, and the template is checked by the Workspace's own rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kaito.api import inferenceset_crd
from kaito.api.inferenceset import parse_inferenceset, workspace_body
from kaito.api.validation import validate_structure
from tests.unit.controller.test_inferenceset_planner import make_set

REPO = Path(__file__).resolve().parents[3]


def _schema() -> dict[str, Any]:
    version = inferenceset_crd.crd()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_the_checked_in_crd_matches_the_models() -> None:
    checked_in = (REPO / inferenceset_crd.CRD_PATH).read_text()
    assert checked_in == inferenceset_crd.render(), (
        "regenerate: python -m kaito.api.inferenceset_crd > " + inferenceset_crd.CRD_PATH
    )
    assert len(list(yaml.safe_load_all(checked_in))) == 1


def test_the_scale_subresource_reads_replicas_and_the_selector() -> None:
    (version,) = inferenceset_crd.crd()["spec"]["versions"]
    assert version["name"] == "v1beta1" and version["storage"]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_upstream_fields_are_in_the_schema() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert {
        "template",
        "replicas",
        "nodeCountLimit",
        "labelSelector",
        "updateStrategy",
        "autoUpgrade",
    } <= set(spec)
    assert set(spec["template"]["properties"]) >= {"metadata", "resource", "inference"}
    status = _schema()["properties"]["status"]["properties"]
    assert {"replicas", "readyReplicas", "selector", "conditions"} <= set(status)


def test_the_workspace_inference_rules_sit_on_the_template() -> None:
    inference = _schema()["properties"]["spec"]["properties"]["template"]["properties"]["inference"]
    placed = {r["rule"] for r in inference.get("x-kubernetes-validations", [])}
    assert "has(self.preset) || has(self.template)" in placed
    assert not any("oldSelf" in rule for rule in placed)


@pytest.mark.parametrize("replicas", [-1, 1001])
def test_replicas_out_of_bounds_are_refused(replicas: int) -> None:
    with pytest.raises(ValidationError):
        parse_inferenceset(make_set().replicas(replicas).obj())


@pytest.mark.parametrize("replicas", [0, 1000])
def test_replicas_at_the_bounds_are_accepted(replicas: int) -> None:
    assert parse_inferenceset(make_set().replicas(replicas).obj()).replicas == replicas


def test_each_workspace_the_set_makes_passes_the_workspace_structure_rules() -> None:
    iset = parse_inferenceset(make_set().replicas(2).obj())
    body = workspace_body(iset, 1)
    assert body["metadata"]["name"] == "chat-1"
    assert validate_structure(body) == []


def test_a_template_breaking_a_workspace_rule_makes_an_invalid_workspace() -> None:
    body = make_set().obj()
    body["spec"]["template"]["inference"]["template"] = {"spec": {}}  # preset and template
    iset = parse_inferenceset(body)
    errors = validate_structure(workspace_body(iset, 0))
    assert any(e.field.startswith("inference") for e in errors)
