"""The Workspace CRD on a real apiserver: admission by schema and CEL, columns, explain, versions.

Only CRD-level behaviour: the kaito webhook (catalog checks) arrives with the controller.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from kaito.api import crd as crd_module
from kaito.api import rules
from kaito.api.validation import validate_structure
from kaito.devcluster import ApiClient, ApiError
from kaito.presets.validation import validate_workspace
from tests.unit.api.builders import (
    LEGACY_EXAMPLE,
    REPO,
    Body,
    inference_workspace,
    legacy_tuning_workspace,
    make_workspace,
    tuning_workspace,
    with_,
    without,
)
from tests.unit.api.test_properties import workspaces
from tests.unit.api.test_structure import INVALID, UPDATES

from .conftest import Kubectl

# These fail before admission (unknown apiVersion/kind) and so cannot name a Workspace field.
NOT_ADMISSION = {"bad apiVersion", "bad kind"}
ADMISSION_CASES = [(i, b, f) for i, b, f in INVALID if i not in NOT_ADMISSION]


@pytest.fixture(scope="session")
def workspace_crd(api: ApiClient) -> dict[str, Any]:
    """The checked-in Workspace CRD, applied once and established."""
    crd: dict[str, Any] = yaml.safe_load((REPO / crd_module.CRD_PATH).read_text())
    api.apply(crd)
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"

    def established() -> dict[str, Any] | None:
        # Right after creation `status.conditions` may be null, not missing.
        found = api.get(path)
        conditions = (found.get("status") or {}).get("conditions") or []
        ok = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
        return found if ok else None

    return api.wait_for(established, timeout_s=60, what="the Workspace CRD to be established")


def _here(body: Body) -> str:
    """YAML for the test's namespace: builders say `default`, kubectl picks the namespace."""
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        body = {**body, "metadata": {k: v for k, v in metadata.items() if k != "namespace"}}
    return yaml.safe_dump(body)


def create(kubectl: Kubectl, body: Body) -> Any:
    # Strict field validation is kubectl's default: unknown fields are errors, as upstream.
    return kubectl("create", "-f", "-", input=_here(body), check=False)


def apply(kubectl: Kubectl, body: Body) -> Any:
    return kubectl("apply", "-f", "-", input=_here(body), check=False)


def get(kubectl: Kubectl, name: str, resource: str = "workspace") -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kubectl("get", resource, name, "-o", "json").stdout)
    return found


def test_the_crd_is_established_with_both_versions(workspace_crd: dict[str, Any]) -> None:
    served = {v["name"]: v for v in workspace_crd["spec"]["versions"]}
    assert set(served) == {"v1alpha1", "v1beta1"} and served["v1beta1"]["storage"]


def test_the_legacy_tuning_workspace_is_admitted_unchanged(
    workspace_crd: dict[str, Any], kubectl: Kubectl
) -> None:
    kubectl("apply", "-f", str(LEGACY_EXAMPLE))
    stored = get(kubectl, "workspace-tuning-phi-3", "workspaces.v1alpha1.kaito.sh")
    legacy = legacy_tuning_workspace()
    assert stored["apiVersion"] == "kaito.sh/v1alpha1"
    assert stored["tuning"]["output"] == legacy["tuning"]["output"]
    assert stored["tuning"]["input"] == legacy["tuning"]["input"]
    assert stored["resource"]["instanceType"] == "Standard_NC6s_v3"
    # Schema defaults apply, nothing else changes.
    assert stored["resource"]["count"] == 1
    assert stored["tuning"]["preset"] == {
        "name": "phi-3-mini-128k-instruct",
        "accessMode": "public",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [(b, f) for _, b, f in ADMISSION_CASES],
    ids=[i for i, _, _ in ADMISSION_CASES],
)
def test_invalid_workspaces_are_rejected_at_admission_naming_the_field(
    workspace_crd: dict[str, Any], kubectl: Kubectl, body: Body, field: str
) -> None:
    result = create(kubectl, body)
    assert result.returncode != 0, f"admitted: {body}"
    assert field in result.stderr, result.stderr


def test_every_create_time_cel_rule_fires_in_a_case_the_apiserver_sees() -> None:
    # The update-time (transition) rules are sent by the UPDATES test below.
    seen = {e.message for _, body, _ in ADMISSION_CASES for e in validate_structure(body)}
    missing = [r.rule for r in rules.RULES if r.transition is None and r.message not in seen]
    assert missing == []


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [(o, n, f) for _, o, n, f in UPDATES],
    ids=[i for i, *_ in UPDATES],
)
def test_immutable_fields_are_rejected_on_update(
    workspace_crd: dict[str, Any], kubectl: Kubectl, old: Body, new: Body, field: str
) -> None:
    created = apply(kubectl, old)
    assert created.returncode == 0, created.stderr
    result = apply(kubectl, new)
    assert result.returncode != 0, "the update was admitted"
    assert field in result.stderr, result.stderr


def test_tuning_input_may_change_on_update(workspace_crd: dict[str, Any], kubectl: Kubectl) -> None:
    body = tuning_workspace()
    assert apply(kubectl, body).returncode == 0
    changed = with_(body, "tuning.input.urls", ["https://example.com/other.parquet"])
    result = apply(kubectl, changed)
    assert result.returncode == 0, result.stderr
    assert get(kubectl, body["metadata"]["name"])["tuning"]["input"]["urls"] == [
        "https://example.com/other.parquet"
    ]


def test_get_shows_the_printer_columns(
    workspace_crd: dict[str, Any], kubectl: Kubectl, api: ApiClient, namespace: str
) -> None:
    kubectl("apply", "-f", str(LEGACY_EXAMPLE))
    status = {
        "status": {
            "conditions": [
                {
                    "type": "JobStarted",
                    "status": "True",
                    "reason": "WorkspaceTuningJobStatusStarted",
                    "message": "Tuning job has started",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            "tuning": {"progressPercent": 42},
            "state": "Running",
            "targetNodeCount": 1,
        }
    }
    api.request(
        "PATCH",
        f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces/workspace-tuning-phi-3/status",
        status,
        content_type="application/merge-patch+json",
    )
    out = kubectl("get", "workspace", "workspace-tuning-phi-3").stdout
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "INSTANCE",
        "PRESET",
        "RESOURCEREADY",
        "INFERENCEREADY",
        "JOBSTARTED",
        "WORKSPACESUCCEEDED",
        "PROGRESS",
        "TARGETNODECOUNT",
        "STATE",
        "AGE",
    ]
    for value in ("Standard_NC6s_v3", "phi-3-mini-128k-instruct", "True", "42", "Running"):
        assert value in row.split(), row


def test_v1alpha1_columns_are_upstreams_plus_preset_and_progress(
    workspace_crd: dict[str, Any], kubectl: Kubectl
) -> None:
    kubectl("apply", "-f", str(LEGACY_EXAMPLE))
    out = kubectl("get", "workspaces.v1alpha1.kaito.sh", "workspace-tuning-phi-3").stdout
    assert "TARGETNODECOUNT" not in out.splitlines()[0]
    assert "JOBSTARTED" in out.splitlines()[0]


def test_explain_shows_field_docs(workspace_crd: dict[str, Any], kubectl: Kubectl) -> None:
    tuning = kubectl("explain", "workspace.tuning").stdout
    assert "Fine-tune a model" in tuning
    for field in ("method", "input", "output", "preset", "config"):
        assert field in tuning
    method = kubectl("explain", "workspace.tuning.method").stdout
    assert "lora or qlora" in method


def test_short_names_work(workspace_crd: dict[str, Any], kubectl: Kubectl) -> None:
    kubectl("apply", "-f", str(LEGACY_EXAMPLE))
    assert "workspace-tuning-phi-3" in kubectl("get", "wk").stdout


def test_an_object_written_as_v1alpha1_reads_back_as_v1beta1_and_back(
    workspace_crd: dict[str, Any], kubectl: Kubectl
) -> None:
    body = make_workspace("serve-phi-3", version="v1alpha1").inference().adapter().obj()
    assert create(kubectl, body).returncode == 0
    name = body["metadata"]["name"]
    beta = get(kubectl, name, "workspaces.v1beta1.kaito.sh")
    alpha = get(kubectl, name, "workspaces.v1alpha1.kaito.sh")
    assert beta["apiVersion"] == "kaito.sh/v1beta1" and alpha["apiVersion"] == "kaito.sh/v1alpha1"
    for field in ("resource", "inference"):
        assert beta[field] == alpha[field]
    assert alpha["inference"]["adapters"][0]["source"]["name"] == "my-adapter"


def test_v1beta1_only_fields_survive_a_read_through_v1alpha1(
    workspace_crd: dict[str, Any], kubectl: Kubectl
) -> None:
    builder = make_workspace("serve-phi-3").inference().partition("accelerator", count=2)
    body = builder.model_access_secret("hf-token").obj()
    assert create(kubectl, body).returncode == 0
    alpha = get(kubectl, body["metadata"]["name"], "workspaces.v1alpha1.kaito.sh")
    assert alpha["resource"]["partition"] == {"mode": "accelerator", "count": 2}
    assert alpha["inference"]["preset"]["modelAccessSecret"] == "hf-token"


def test_v1alpha1_defaults_the_instance_type_and_v1beta1_does_not(
    workspace_crd: dict[str, Any], kubectl: Kubectl
) -> None:
    alpha = without(inference_workspace(name="alpha", version="v1alpha1"), "resource.instanceType")
    beta = without(inference_workspace(name="beta", version="v1beta1"), "resource.instanceType")
    assert create(kubectl, alpha).returncode == 0 and create(kubectl, beta).returncode == 0
    assert get(kubectl, "alpha", "workspaces.v1beta1.kaito.sh")["resource"]["instanceType"] == (
        "Standard_NC24ads_A100_v4"
    )
    assert "instanceType" not in get(kubectl, "beta", "workspaces.v1beta1.kaito.sh")["resource"]


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=workspaces())
def test_offline_crd_checks_agree_with_the_apiserver(
    workspace_crd: dict[str, Any], api: ApiClient, namespace: str, body: Body
) -> None:
    # If `kaito validate` passes, `kubectl apply` must pass too (server dry run, strict fields).
    # Status is out of scope: users never write it, and admission deliberately ignores it (the
    # status subresource owns it), while the apiserver still schema-checks it on create.
    body = {key: value for key, value in body.items() if key != "status"}
    version = str(body.get("apiVersion", "")).rsplit("/", 1)[-1]
    version = version if version in ("v1alpha1", "v1beta1") else "v1beta1"
    payload = yaml.safe_load(_here(body))
    try:
        api.request(
            "POST",
            f"/apis/kaito.sh/{version}/namespaces/{namespace}/workspaces",
            payload,
            query={"dryRun": "All", "fieldValidation": "Strict"},
        )
        server_rejects = False
    except ApiError as error:
        assert error.status in (400, 422), error
        server_rejects = True
    if server_rejects:
        assert validate_workspace(body), f"the apiserver rejects, kaito validate admits: {body}"
    else:
        # The CRD layer's Python twin is not stricter than the CRD itself.
        assert validate_structure(body) == [], f"only the offline CRD check rejects: {body}"
