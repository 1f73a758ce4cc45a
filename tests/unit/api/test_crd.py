"""The checked-in Workspace CRD: in sync with the models, structural, documented, compatible."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from kaito.api import crd as crd_module
from kaito.api.rules import RULES

from .builders import REPO, legacy_tuning_workspace

CRD_FILE = REPO / crd_module.CRD_PATH


def _version(name: str) -> dict[str, Any]:
    versions = crd_module.crd()["spec"]["versions"]
    found: dict[str, Any] = next(v for v in versions if v["name"] == name)
    return found


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_the_checked_in_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crd_module.render(), (
        f"{crd_module.CRD_PATH} is stale: run `python -m kaito.api.crd > {crd_module.CRD_PATH}`"
    )


def test_both_versions_are_served_and_v1beta1_is_stored() -> None:
    versions = {v["name"]: v for v in crd_module.crd()["spec"]["versions"]}
    assert set(versions) == {"v1alpha1", "v1beta1"}
    assert all(v["served"] for v in versions.values())
    assert versions["v1beta1"]["storage"] and not versions["v1alpha1"]["storage"]
    scale = {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert all(v["subresources"] == {"status": {}, "scale": scale} for v in versions.values())


def test_names_match_upstream() -> None:
    spec = crd_module.crd()["spec"]
    assert spec["names"]["shortNames"] == ["wk", "wks"]
    assert spec["scope"] == "Namespaced"
    assert crd_module.crd()["metadata"]["name"] == "workspaces.kaito.sh"


@pytest.mark.parametrize("version", ["v1alpha1", "v1beta1"])
def test_the_schema_is_structural(version: str) -> None:
    schema = _version(version)["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "propertyNames"} & set(node), path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert node.get("default", "") is not None, path
        if "properties" in node:
            assert node.get("additionalProperties") is None, path


def test_there_is_no_spec_wrapper_and_rules_sit_on_the_root() -> None:
    schema = _version("v1beta1")["schema"]["openAPIV3Schema"]
    # `spec` exists only because the scale subresource must point under it.
    assert set(schema["properties"]["spec"]["properties"]) == {"replicas"}
    assert {"resource", "inference", "tuning", "status"} <= set(schema["properties"])
    root_rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert "has(self.inference) || has(self.tuning)" in root_rules


def test_every_rule_lands_in_the_schema_with_a_message_naming_a_field() -> None:
    schema = _version("v1beta1")["schema"]["openAPIV3Schema"]
    placed = [
        rule for _, node in _walk(schema) for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(placed) == len(RULES)
    for rule in placed:
        words = rule["message"]
        assert any(f in words for f in ("inference", "tuning", "resource")), words
        assert ":" in words or ";" in words, f"message should say how to fix: {words}"


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("tuning", "Fine-tune"),
        ("inference", "Serve"),
        ("resource", "GPU nodes"),
    ],
)
def test_fields_carry_descriptions_for_kubectl_explain(field: str, expected: str) -> None:
    schema = _version("v1beta1")["schema"]["openAPIV3Schema"]
    assert expected in schema["properties"][field]["description"]
    undocumented = [
        path
        for path, node in _walk(schema["properties"][field])
        if path and not path.endswith(("[]", "{}")) and "description" not in node
    ]
    assert undocumented == []


def test_v1alpha1_printer_columns_are_upstreams_plus_preset_and_progress() -> None:
    names = [c["name"] for c in _version("v1alpha1")["additionalPrinterColumns"]]
    assert names == [
        "Instance",
        "Preset",
        "ResourceReady",
        "InferenceReady",
        "JobStarted",
        "WorkspaceSucceeded",
        "Progress",
        "Age",
    ]


def test_v1beta1_adds_target_node_count_and_state_before_age() -> None:
    names = [c["name"] for c in _version("v1beta1")["additionalPrinterColumns"]]
    assert names[-3:] == ["TargetNodeCount", "State", "Age"]


def test_condition_columns_read_the_condition_status() -> None:
    columns = {c["name"]: c for c in _version("v1beta1")["additionalPrinterColumns"]}
    assert columns["JobStarted"]["jsonPath"] == '.status.conditions[?(@.type=="JobStarted")].status'


def test_only_v1alpha1_defaults_the_instance_type() -> None:
    def instance(version: str) -> dict[str, Any]:
        props = _version(version)["schema"]["openAPIV3Schema"]["properties"]
        node: dict[str, Any] = props["resource"]["properties"]["instanceType"]
        return node

    assert instance("v1alpha1")["default"] == "Standard_NC24ads_A100_v4"
    assert "default" not in instance("v1beta1")


def test_the_legacy_workspace_satisfies_the_openapi_schema() -> None:
    schema = _version("v1alpha1")["schema"]["openAPIV3Schema"]
    jsonschema.Draft7Validator(schema).validate(legacy_tuning_workspace())


def test_the_checked_in_file_is_a_single_yaml_document() -> None:
    assert len(list(yaml.safe_load_all(CRD_FILE.read_text()))) == 1
