"""The tuning runtime annotates its own pod with its progress, using only its pod's token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kaito.devcluster import ApiClient
from kaito.runtime.tuning.podreport import ANNOTATION, PodAnnotator

pytestmark = [pytest.mark.cluster]

JSON = dict[str, Any]
SA = "kaito-tuning"


def pod_body(name: str) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "trainer", "image": "kaito/runtime:test"}]},
    }


def tuning_identity(api: ApiClient, namespace: str, tmp_path: Path) -> Path:
    """A service account allowed to patch pods in `namespace` only; its token in a file."""
    for obj in (
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": SA},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": SA},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA},
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": namespace}],
        },
    ):
        obj["metadata"]["namespace"] = namespace  # type: ignore[index]
        api.create(obj)
    issued = api.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{SA}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    token = tmp_path / "token"
    token.write_text(issued["status"]["token"])
    return token


def annotator(api: ApiClient, namespace: str, pod: str, token: Path) -> PodAnnotator:
    return PodAnnotator(api.host, api.port, namespace, pod, token, Path(api.ca_file))


def test_the_runtime_reports_progress_on_its_own_pod_at_most_every_few_seconds(
    api: ApiClient, namespace: str, tmp_path: Path
) -> None:
    token = tuning_identity(api, namespace, tmp_path)
    pod = api.create(
        {**pod_body("tune-abc12"), "metadata": {"name": "tune-abc12", "namespace": namespace}}
    )
    reporter = annotator(api, namespace, pod["metadata"]["name"], token)

    assert reporter.publish({"phase": "training", "step": 1, "total_steps": 10}, now=100.0)
    # Same phase, 2 s later: throttled, no request.
    assert not reporter.publish({"phase": "training", "step": 2, "total_steps": 10}, now=102.0)
    assert reporter.publish({"phase": "training", "step": 6, "total_steps": 10}, now=106.0)
    # A phase change is always sent.
    assert reporter.publish({"phase": "completed", "step": 10, "total_steps": 10}, now=106.5)

    stored = api.get(f"/api/v1/namespaces/{namespace}/pods/tune-abc12")
    report = json.loads(stored["metadata"]["annotations"][ANNOTATION])
    assert (report["phase"], report["step"]) == ("completed", 10)


def test_the_token_cannot_write_pods_elsewhere_and_a_refusal_does_not_raise(
    api: ApiClient, namespace: str, tmp_path: Path
) -> None:
    token = tuning_identity(api, namespace, tmp_path)
    api.create(
        {**pod_body("tune-xyz98"), "metadata": {"name": "tune-xyz98", "namespace": namespace}}
    )
    elsewhere = annotator(api, "kube-system", "kube-apiserver", token)
    assert not elsewhere.publish({"phase": "training", "step": 1}, now=0.0)
    assert annotator(api, namespace, "tune-xyz98", token).publish({"phase": "loading"}, now=0.0)
