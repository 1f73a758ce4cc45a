"""The chart's RBAC on a real apiserver: SubjectAccessReviews for every verb the operator uses
(allowed) and a sample of others (forbidden), cluster-wide and with watchNamespace; the
operator grants the tuning role without holding it; the tuning identity is narrow."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from kaito.api.workspace import parse_workspace
from kaito.devcluster import ApiClient
from kaito.manifests.context import resolve
from kaito.manifests.options import ClusterOptions
from kaito.manifests.tuning import build_tuning_identity
from tests.unit.api.builders import legacy_tuning_workspace
from tests.unit.deploy.chart import render
from tests.unit.deploy.test_rbac import KOPF_NAMESPACED, used_by_the_code

pytestmark = [pytest.mark.cluster]
JSON = dict[str, Any]
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
CLUSTER_SCOPED = {
    "nodeclaims",
    "nodes",
    "customresourcedefinitions",
    "namespaces",
    "validatingwebhookconfigurations",
}
WEBHOOK = "validation.workspace.kaito.sh"
# resourceNames in the chart: the permission holds for this name only.
NAMED = {
    "validatingwebhookconfigurations": WEBHOOK,
    "clusterroles": "kaito-tuning",
}


def install(api: ApiClient, objects: list[JSON]) -> list[JSON]:
    """Apply the chart's ServiceAccount, roles and bindings; returns what to delete later."""
    made = []
    for obj in objects:
        if obj["kind"] in RBAC_KINDS:
            api.apply(obj)
            made.append(obj)
    return made


@pytest.fixture
def chart_rbac(api: ApiClient, namespace: str) -> Iterator[Any]:
    made: list[JSON] = []

    def apply(values: dict[str, Any] | None = None) -> None:
        made.extend(install(api, render(values, namespace=namespace)))

    yield apply
    for obj in reversed(made):
        api.delete(obj)


def review(api: ApiClient, user: str, verb: str, group: str, resource: str, **where: str) -> bool:
    """Would `user` (a ServiceAccount, system:serviceaccount:<ns>:<name>) be allowed?"""
    account_ns = user.split(":")[2]
    main, _, sub = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": main, **where}
    if sub:
        attributes["subresource"] = sub
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{account_ns}",
                "system:authenticated",
            ],
            "resourceAttributes": attributes,
        },
    }
    answer = api.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body)
    return bool(answer["status"].get("allowed"))


def where(resource: str, namespace: str) -> dict[str, str]:
    main = resource.split("/")[0]
    out = {} if main in CLUSTER_SCOPED else {"namespace": namespace}
    if main in NAMED:
        out["name"] = NAMED[main]
    return out


# (verb, group, resource, name) the operator must never be allowed, whatever the namespace.
FORBIDDEN = [
    ("patch", "", "pods", None),
    ("delete", "", "pods", None),
    ("create", "", "pods", None),
    ("patch", "", "configmaps", None),
    ("update", "", "configmaps", None),
    ("delete", "", "configmaps", None),
    ("get", "", "secrets", None),
    ("list", "", "secrets", None),
    ("create", "rbac.authorization.k8s.io", "roles", None),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", "cluster-admin"),
    ("escalate", "rbac.authorization.k8s.io", "roles", None),
    ("delete", "rbac.authorization.k8s.io", "rolebindings", None),
    ("create", "admissionregistration.k8s.io", "validatingwebhookconfigurations", None),
    ("delete", "admissionregistration.k8s.io", "validatingwebhookconfigurations", WEBHOOK),
    ("patch", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "other"),
    ("create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", None),
    ("patch", "", "nodes", None),
    ("create", "apps", "deployments", None),
    ("delete", "", "services", None),
    ("create", "", "serviceaccounts/token", None),
]


def forbidden_where(resource: str, name: str | None, namespace: str) -> dict[str, str]:
    out = {} if resource in CLUSTER_SCOPED else {"namespace": namespace}
    if name:
        out["name"] = name
    return out


def test_cluster_wide_every_verb_the_operator_uses_is_allowed_and_others_are_not(
    api: ApiClient, namespace: str, chart_rbac: Any
) -> None:
    chart_rbac()
    operator = f"system:serviceaccount:{namespace}:kaito"
    used = sorted(used_by_the_code())
    denied = [p for p in used if not review(api, operator, p[2], p[0], p[1], **where(p[1], "x"))]
    assert denied == [], "used by the code but not allowed"
    allowed = [
        (verb, resource, name)
        for verb, group, resource, name in FORBIDDEN
        if review(api, operator, verb, group, resource, **forbidden_where(resource, name, "x"))
    ]
    assert allowed == [], "allowed but never needed"


def test_with_watch_namespace_workloads_are_reachable_in_that_namespace_only(
    api: ApiClient, namespace: str, chart_rbac: Any
) -> None:
    watched = f"{namespace}-w"
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": watched}})
    try:
        chart_rbac({"watchNamespace": watched})
        operator = f"system:serviceaccount:{namespace}:kaito"
        used = sorted(used_by_the_code(namespaced=True))
        assert set(KOPF_NAMESPACED) <= set(used)
        denied = [
            p for p in used if not review(api, operator, p[2], p[0], p[1], **where(p[1], watched))
        ]
        assert denied == []
        elsewhere = [
            p
            for p in used
            if p[1].split("/")[0] not in CLUSTER_SCOPED
            and review(api, operator, p[2], p[0], p[1], **where(p[1], "another-team"))
        ]
        assert elsewhere == [], "namespaced rights leak out of watchNamespace"
        assert review(api, operator, "get", "", "configmaps", namespace=namespace)
        assert not review(api, operator, "get", "", "configmaps", namespace="another-team")
        for verb, group, resource, name in FORBIDDEN:
            assert not review(
                api, operator, verb, group, resource, **forbidden_where(resource, name, watched)
            ), (verb, resource, name)
    finally:
        api.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": watched}})


def token_for(api: ApiClient, namespace: str, account: str, pod: JSON | None = None) -> str:
    """A TokenRequest token for the ServiceAccount (bound to `pod` when given)."""
    spec: JSON = {}
    if pod is not None:
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
        }
    issued = api.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    return str(issued["status"]["token"])


def as_token(
    api: ApiClient, token: str, method: str, path: str, body: Any, content_type: str
) -> tuple[int, JSON]:
    """One request with a bearer token instead of the admin certificate."""
    context = ssl.create_default_context(cafile=str(api.ca_file))
    connection = http.client.HTTPSConnection(api.host, api.port, context=context, timeout=30)
    try:
        connection.request(
            method,
            path,
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        )
        response = connection.getresponse()
        answer = json.loads(response.read() or b"{}")
    finally:
        connection.close()
    return response.status, answer


def test_the_operator_grants_the_tuning_role_without_holding_its_permission(
    api: ApiClient, namespace: str, chart_rbac: Any
) -> None:
    chart_rbac()
    token = token_for(api, namespace, "kaito")
    workspace = legacy_tuning_workspace()
    workspace["metadata"].update(namespace=namespace, uid="u-1")
    ctx = resolve(parse_workspace(workspace), ClusterOptions())
    for obj in build_tuning_identity(ctx):
        status, answer = as_token(
            api,
            token,
            "PATCH",
            api.path_for(obj) + "?fieldManager=kaito&force=true",
            obj,
            "application/apply-patch+yaml",
        )
        assert status in (200, 201), (obj["kind"], answer.get("message"))
    tuning = f"system:serviceaccount:{namespace}:kaito-tuning"
    assert review(api, tuning, "patch", "", "pods", namespace=namespace)
    for verb, resource, ns in [
        ("patch", "pods", "another-team"),
        ("delete", "pods", namespace),
        ("create", "pods", namespace),
        ("get", "secrets", namespace),
        ("patch", "configmaps", namespace),
        ("patch", "pods/status", namespace),
    ]:
        assert not review(api, tuning, verb, "", resource, namespace=ns), (verb, resource, ns)
