"""The tuning runtime annotates its own pod with its progress, with its pod-bound token and the
chart's tuning role and policy: its own pod's progress annotation, nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaito.api.workspace import parse_workspace
from kaito.contract.progress import ANNOTATION
from kaito.devcluster import ApiClient
from kaito.manifests.context import resolve
from kaito.manifests.options import ClusterOptions
from kaito.manifests.tuning import TUNING_SERVICE_ACCOUNT, build_tuning_identity
from kaito.runtime.tuning.podreport import PodAnnotator
from tests.unit.api.builders import legacy_tuning_workspace
from tests.unit.deploy.chart import render

pytestmark = [pytest.mark.cluster]

JSON = dict[str, Any]
# The chart's cluster-wide pieces for the tuning identity (release name "kaito").
TUNING_KINDS = ("ClusterRole", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


@pytest.fixture(scope="module")
def tuning_policy(api: ApiClient) -> Iterator[None]:
    """The chart's ClusterRole kaito-tuning and its own-pod admission policy, installed once."""
    objects = [
        o
        for o in render()
        if o["kind"] in TUNING_KINDS and o["metadata"]["name"].startswith("kaito-tuning")
    ]
    assert len(objects) == 3
    for obj in objects:
        api.apply(obj)
    yield
    for obj in reversed(objects):
        api.delete(obj)


def pod_body(name: str, namespace: str) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "tune"}},
        "spec": {
            "serviceAccountName": TUNING_SERVICE_ACCOUNT,
            "automountServiceAccountToken": False,
            "containers": [{"name": "trainer", "image": "kaito/runtime:test"}],
        },
    }


def tuning_identity(api: ApiClient, namespace: str) -> None:
    """What the operator applies for a tuning Workspace: kaito-tuning and its RoleBinding."""
    workspace = legacy_tuning_workspace()
    workspace["metadata"].update(namespace=namespace, uid="u-1")
    ctx = resolve(parse_workspace(workspace), ClusterOptions())
    for obj in build_tuning_identity(ctx):
        api.apply(obj)


def pod_token(api: ApiClient, pod: JSON, tmp_path: Path) -> Path:
    """The token a kubelet would project into the pod: bound to it (its name in the token)."""
    namespace = pod["metadata"]["namespace"]
    issued = api.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{TUNING_SERVICE_ACCOUNT}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"],
                }
            },
        },
    )
    token = tmp_path / f"token-{pod['metadata']['name']}"
    token.write_text(issued["status"]["token"])
    return token


def annotator(api: ApiClient, namespace: str, pod: str, token: Path) -> PodAnnotator:
    return PodAnnotator(api.host, api.port, namespace, pod, token, Path(api.ca_file))


def ready(api: ApiClient, namespace: str, tmp_path: Path) -> tuple[JSON, Path]:
    """A tuning pod with its token, once its binding reached the authorizer (a moment)."""
    tuning_identity(api, namespace)
    pod = api.create(pod_body("tune-abc12", namespace))
    token = pod_token(api, pod, tmp_path)
    probe = annotator(api, namespace, pod["metadata"]["name"], token)

    def allowed() -> bool:
        try:
            probe._patch({"metadata": {"annotations": {ANNOTATION: "{}"}}})
        except RuntimeError:
            return False
        return True

    attempts = iter(range(1000))

    def policy_in_force() -> bool:
        # The admission policy reaches the apiserver's admission informer some time after it is
        # created: until it refuses a change of the pod's own labels, it protects nothing. Each
        # probe sets a new value, so a probe that got through before cannot make later ones no-ops.
        try:
            probe._patch({"metadata": {"labels": {"policy-probe": str(next(attempts))}}})
        except RuntimeError as error:
            return "HTTP 403" in str(error)
        return False

    api.wait_for(allowed, timeout_s=30, interval_s=0.5, what="the tuning identity to work")
    api.wait_for(policy_in_force, timeout_s=30, interval_s=0.5, what="the own-pod policy")
    return pod, token


def test_the_runtime_reports_progress_on_its_own_pod_at_most_every_few_seconds(
    api: ApiClient, namespace: str, tmp_path: Path, tuning_policy: None
) -> None:
    pod, token = ready(api, namespace, tmp_path)
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


def test_the_tuning_identity_cannot_patch_another_pod_or_anything_but_its_progress(
    api: ApiClient, namespace: str, tmp_path: Path, tuning_policy: None
) -> None:
    pod, token = ready(api, namespace, tmp_path)
    mine = annotator(api, namespace, pod["metadata"]["name"], token)
    assert mine.publish({"phase": "loading"}, now=0.0)
    other = api.create(pod_body("someone-elses-pod", namespace))
    theirs = annotator(api, namespace, other["metadata"]["name"], token)
    assert not theirs.publish({"phase": "training", "step": 1}, now=0.0)
    with pytest.raises(RuntimeError, match="HTTP 403"):
        theirs._patch({"metadata": {"annotations": {ANNOTATION: "{}"}}})
    stored = api.get(f"/api/v1/namespaces/{namespace}/pods/someone-elses-pod")
    assert ANNOTATION not in (stored["metadata"].get("annotations") or {})
    # Its own pod: the progress annotation only, not labels or other annotations.
    for body in (
        {"metadata": {"labels": {"app": "hijacked"}}},
        {"metadata": {"annotations": {"other": "x"}}},
    ):
        with pytest.raises(RuntimeError, match="HTTP 403"):
            mine._patch(body)
    # Nor pods elsewhere (RBAC: the binding is in this namespace only).
    elsewhere = annotator(api, "kube-system", "kube-apiserver", token)
    assert not elsewhere.publish({"phase": "training", "step": 1}, now=0.0)
