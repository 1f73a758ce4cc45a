"""Admission on a real control plane: names that cannot work are refused with their limit, the
webhook stays registered across restarts (fail closed), and the controller re-checks."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kaito.devcluster import ApiClient
from tests.cluster.test_controller_workspace import (  # fixtures, shared with that module
    LEGACY_EXAMPLE,
    Proc,
    StartOperator,
    claims_of,
    crds,
    inference_body,
    start_operator,
    wait_condition,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
JSON = dict[str, Any]
__all__ = ["crds", "start_operator"]
WEBHOOK = "validation.workspace.kaito.sh"
WEBHOOK_PATH = f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{WEBHOOK}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def webhook_operator(api: ApiClient, start_operator: StartOperator) -> Iterator[Any]:
    """Start operators serving the webhook on one port; the configuration is removed after the
    test (failurePolicy Fail with no server would block every later Workspace write)."""
    port = str(free_port())

    def start() -> Proc:
        return start_operator(
            webhook_enabled="true", webhook_address="127.0.0.1", webhook_port=port
        )

    yield start
    api.delete(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK},
        }
    )


def apply(kubectl: Any, body: JSON) -> Any:
    return kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False)


def refusal(kubectl: Any, body: JSON, marker: str) -> str | None:
    """The error of applying `body` when it contains `marker`; a body that got in is removed."""
    result = apply(kubectl, body)
    if result.returncode != 0 and marker in result.stderr:
        return str(result.stderr)
    if result.returncode == 0:
        kubectl("delete", "workspace", body["metadata"]["name"], "--wait=false", check=False)
    return None


def bad(namespace: str) -> JSON:
    body = inference_body("typo", "phi-3-mini-4k-instruc", "Standard_NC24ads_A100_v4")
    body["metadata"]["namespace"] = namespace
    return body


def served(api: ApiClient, kubectl: Any, namespace: str) -> str:
    return str(
        api.wait_for(
            lambda: refusal(kubectl, bad(namespace), "phi-3-mini-4k-instruct"),
            timeout_s=60,
            interval_s=1.0,
            what="the webhook to refuse a typo",
        )
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a" * 63, "the maximum here is 52"),
        ("1serve", "must start with a lowercase letter"),
    ],
)
def test_names_that_cannot_work_are_refused_with_their_limit(
    api: ApiClient, namespace: str, kubectl: Any, webhook_operator: Any, name: str, expected: str
) -> None:
    webhook_operator()
    served(api, kubectl, namespace)
    body = inference_body(name, "phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4")
    body["metadata"]["namespace"] = namespace
    result = apply(kubectl, body)
    assert result.returncode != 0
    assert 'admission webhook "workspace.validation.workspace.kaito.sh" denied' in result.stderr
    assert expected in result.stderr
    assert "metadata.name" in result.stderr


def test_a_restarting_operator_never_lets_a_bad_workspace_in(
    api: ApiClient, namespace: str, kubectl: Any, webhook_operator: Any
) -> None:
    first = webhook_operator()
    served(api, kubectl, namespace)
    for stop in ("stop", "kill"):  # a graceful stop (SIGTERM), then the hardest one
        getattr(first, stop)()
        # Still registered, with failurePolicy Fail: nothing gets in while no server answers.
        config = api.get(WEBHOOK_PATH)
        policies = {hook["name"]: hook["failurePolicy"] for hook in config["webhooks"]}
        assert policies and set(policies.values()) == {"Fail"}, policies
        down = apply(kubectl, bad(namespace))
        assert down.returncode != 0, "admitted while the webhook was down"
        assert "failed calling webhook" in down.stderr
        first = webhook_operator()
        message = served(api, kubectl, namespace)
        assert "phi-3-mini-4k-instruct" in message, first.tail()
    admitted = kubectl("apply", "-f", str(LEGACY_EXAMPLE))
    assert "created" in admitted.stdout


def test_a_workspace_that_got_past_admission_is_refused_by_the_controller(
    api: ApiClient, namespace: str, start_operator: StartOperator
) -> None:
    # No webhook (as if it had been bypassed): the CRD admits a 60-character name, which
    # the StatefulSet's pods could not carry.
    operator = start_operator()
    name = "w" * 60
    body = inference_body(name, "phi-3-mini-4k-instruct", "Standard_NC24ads_A100_v4")
    body["metadata"]["namespace"] = namespace
    api.create(body)
    found = wait_condition(
        api,
        namespace,
        name,
        "WorkspaceSucceeded",
        "False",
        reason="InvalidWorkspace",
        logs=operator,
    )
    assert "the maximum here is 52" in found["message"]
    assert claims_of(api, namespace, name) == []
