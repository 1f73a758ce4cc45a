"""On a real control plane: names taken by someone else stay untouched and stop the Workspace
with NameConflict; API refusals (422, 403) show in its conditions at the first failure."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kaito.devcluster import ApiClient
from kaito.manifests.keys import FIELD_MANAGER
from tests.cluster.test_controller_workspace import (  # fixtures, shared with that module
    LEGACY_EXAMPLE,
    Proc,
    StartOperator,
    claims_of,
    condition,
    crds,
    create_workspace,
    inference_body,
    simulator,
    start_operator,
    wait_condition,
    workspace_path,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
JSON = dict[str, Any]
__all__ = ["crds", "simulator", "start_operator"]
FAST_BACKOFF = {"error_backoff_seconds": "1", "error_backoff_max_seconds": "2"}


def foreign(api: ApiClient, namespace: str, obj: JSON) -> JSON:
    """Create `obj` as another team would: no kaito labels, no ownerReference."""
    body = copy.deepcopy(obj)
    body["metadata"]["namespace"] = namespace
    return api.create(body)


def path_of(api: ApiClient, obj: JSON) -> str:
    return api.path_for(obj)


def unchanged(api: ApiClient, before: JSON, *, status_moves: bool = False) -> None:
    """Byte-for-byte the same object; for kinds whose controllers write status (Jobs), the
    same everywhere but status, and no field manager of kaito's."""
    after = api.get(path_of(api, before))
    managers = {entry["manager"] for entry in after["metadata"].get("managedFields", [])}
    assert FIELD_MANAGER not in managers, managers
    if not status_moves:
        assert after == before
        return
    for key in ("labels", "annotations", "ownerReferences", "uid"):
        assert after["metadata"].get(key) == before["metadata"].get(key), key
    assert after["spec"] == before["spec"]


def conflict(api: ApiClient, namespace: str, name: str, logs: Proc) -> JSON:
    found = wait_condition(
        api, namespace, name, "ReconcileError", "True", reason="NameConflict", logs=logs
    )
    succeeded = condition(api.get(workspace_path(namespace, name)), "WorkspaceSucceeded")
    assert succeeded is not None and succeeded["reason"] == "NameConflict"
    return found


SERVICE: JSON = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "taken", "labels": {"app": "theirs"}},
    "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 8080}]},
}
CONFIG_MAP: JSON = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "taken-inference-config"},
    "data": {"inference_config.yaml": "theirs: true\n"},
}


def test_a_foreign_service_and_config_map_stay_untouched_and_stop_the_workspace(
    api: ApiClient, namespace: str, simulator: Proc, start_operator: StartOperator
) -> None:
    service = foreign(api, namespace, SERVICE)
    config_map = foreign(api, namespace, CONFIG_MAP)
    operator = start_operator(**FAST_BACKOFF)
    create_workspace(
        api,
        namespace,
        inference_body("taken", "phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4"),
    )
    found = conflict(api, namespace, "taken", operator)
    assert found["message"].startswith(f"Service {namespace}/taken already exists")
    assert "not created by kaito" in found["message"]
    # Stopped before asking for a GPU node, and told in an Event.
    time.sleep(3)  # several backoff periods: retries must not touch anything either
    assert claims_of(api, namespace, "taken") == []
    unchanged(api, service)
    unchanged(api, config_map)
    events = api.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    conflicts = [e for e in events if e["reason"] == "NameConflict"]
    assert len(conflicts) == 1, "a recurring failure is one aggregated Event"
    assert conflicts[0]["type"] == "Warning"
    assert conflicts[0]["count"] >= 2

    # Their Service goes: the next name in the way is their ConfigMap, reported the same way.
    api.delete(service)

    def next_conflict() -> JSON | None:
        cond = condition(api.get(workspace_path(namespace, "taken")), "ReconcileError")
        return cond if cond and "ConfigMap" in cond["message"] else None

    moved = api.wait_for(next_conflict, timeout_s=30, what="the ConfigMap conflict")
    assert moved["message"].startswith(f"ConfigMap {namespace}/taken-inference-config")
    unchanged(api, config_map)

    # Nothing in the way: the Workspace proceeds and the failure condition goes.
    api.delete(config_map)
    api.wait_for(lambda: claims_of(api, namespace, "taken"), timeout_s=30, what="a NodeClaim")
    api.wait_for(
        lambda: condition(api.get(workspace_path(namespace, "taken")), "ReconcileError") is None,
        timeout_s=30,
        what="ReconcileError to go",
    )


def test_a_foreign_job_and_claim_stay_untouched_and_stop_the_tuning_workspace(
    api: ApiClient, namespace: str, simulator: Proc, start_operator: StartOperator
) -> None:
    name = "workspace-tuning-phi-3"
    job = foreign(
        api,
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "suspend": True,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "theirs", "image": "example.com/theirs:1"}],
                    }
                },
            },
        },
    )
    claim = foreign(
        api,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{name}-results"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    operator = start_operator(**FAST_BACKOFF)
    body = yaml.safe_load(LEGACY_EXAMPLE.read_text())
    create_workspace(api, namespace, body)
    found = conflict(api, namespace, name, operator)
    assert found["message"].startswith(f"Job {namespace}/{name} already exists")
    time.sleep(3)
    unchanged(api, job, status_moves=True)
    unchanged(api, claim, status_moves=True)
    assert claims_of(api, namespace, name) == []
    # Their Job goes: their PVC is next.
    api.delete(job, propagation="Foreground")

    def claim_conflict() -> JSON | None:
        cond = condition(api.get(workspace_path(namespace, name)), "ReconcileError")
        return cond if cond and "PersistentVolumeClaim" in cond["message"] else None

    api.wait_for(claim_conflict, timeout_s=60, what="the PVC conflict")
    unchanged(api, claim, status_moves=True)


# --- API refusals --------------------------------------------------------------------------


@pytest.fixture
def deny_services(api: ApiClient, namespace: str) -> Iterator[Any]:
    """A ValidatingAdmissionPolicy refusing Service writes in this namespace, with a given
    reason (Invalid: 422, Forbidden: 403), as a cluster's own policy might."""
    made: list[JSON] = []

    def install(reason: str) -> str:
        name = f"deny-services-{namespace}"
        message = f"services are not allowed in {namespace} (test policy, {reason})"
        policy = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["services"],
                        }
                    ]
                },
                "validations": [{"expression": "false", "message": message, "reason": reason}],
            },
        }
        binding = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        }
        for obj in (policy, binding):
            api.apply(obj)
            made.append(obj)
        probe = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "probe", "namespace": namespace},
            "spec": {"ports": [{"port": 1}]},
        }

        def enforced() -> bool:
            try:
                api.create(probe)
            except Exception as error:  # the policy answers once it is loaded
                return "test policy" in str(error)
            api.delete(probe)
            return False

        api.wait_for(enforced, timeout_s=30, interval_s=0.5, what="the policy to apply")
        return message

    yield install
    for obj in reversed(made):
        api.delete(obj)


@pytest.mark.parametrize(
    ("policy_reason", "code", "reason"),
    [("Invalid", 422, "Invalid"), ("Forbidden", 403, "Forbidden")],
)
def test_a_refused_write_is_in_the_conditions_at_the_first_failure(
    api: ApiClient,
    namespace: str,
    simulator: Proc,
    start_operator: StartOperator,
    deny_services: Any,
    policy_reason: str,
    code: int,
    reason: str,
) -> None:
    message = deny_services(policy_reason)
    operator = start_operator(error_backoff_seconds="5", error_backoff_max_seconds="5")
    name = f"refused-{code}"
    create_workspace(
        api, namespace, inference_body(name, "phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4")
    )
    found = wait_condition(
        api, namespace, name, "ReconcileError", "True", reason=reason, timeout_s=120, logs=operator
    )
    assert found["message"].startswith(f"apply Service {namespace}/{name} failed ({code}): ")
    assert message in found["message"]

    def events() -> list[JSON]:
        items = api.get(f"/api/v1/namespaces/{namespace}/events")["items"]
        return [e for e in items if e["reason"] == reason]

    # Reported at the first failure: within one backoff period (5 s), before any retry.
    assert [e.get("count") for e in api.wait_for(events, what="the Event")] == [1]
    assert message in events()[0]["message"]
    succeeded = condition(api.get(workspace_path(namespace, name)), "WorkspaceSucceeded")
    assert succeeded is not None and succeeded["reason"] == reason
