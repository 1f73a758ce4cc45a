"""The operator's roles grant exactly what the code uses, and the tuning pods' role only their
progress annotation."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kaito.api.inferenceset
import kaito.k8s.cache
import kaito.k8s.client
import kaito.k8s.inferenceset
import kaito.k8s.lease
import kaito.manifests
import kaito.reconcile
from kaito.contract.progress import ANNOTATION
from kaito.k8s import resources
from kaito.operator.handlers import build_registry
from kaito.operator.settings import Settings
from tests.unit.deploy.chart import find, render

Permission = tuple[str, str, str]  # (apiGroup, resource, verb)
RESOURCE_CLASSES: dict[str, Any] = {
    name: value for name, value in vars(resources).items() if hasattr(value, "_api_info")
}
# lightkube method -> RBAC verb, for calls on a resource class in kaito.k8s.client.
CLIENT_VERBS = {
    "get": "get",
    "list": "list",
    "list_json": "list",
    "create": "create",
    "patch": "patch",
    "delete": "delete",
}
# What kopf itself does, beyond the handlers' watches (not visible in kaito's code). The chart
# installs the webhook configuration, so kopf's managed mode (create) is not used there.
KOPF = {
    # finalizer and its progress/diff-base annotations
    ("kaito.sh", "workspaces", "patch"),
    ("kaito.sh", "inferencesets", "patch"),
    # it re-scans resources when CRDs come and go
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}


def rbac_name(resource: Any) -> tuple[str, str]:
    info = resource._api_info
    plural = info.plural if info.action is None else f"{info.plural}/{info.action}"
    return info.resource.group, plural


def resource_argument(node: ast.expr) -> Any | None:
    """The lightkube class a call's first argument names (`X`, `X.Status`, `cast(X, ...)`)."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "cast" and node.args:
        return resource_argument(node.args[0])
    if isinstance(node, ast.Name):
        return RESOURCE_CLASSES.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        owner = RESOURCE_CLASSES.get(node.value.id)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def direct_calls() -> Iterator[Permission]:
    """Calls with a fixed resource class in kaito.k8s (reads, status, events)."""
    trees = [ast.parse(inspect.getsource(m)) for m in (kaito.k8s.client, kaito.k8s.inferenceset)]
    for node in (node for tree in trees for node in ast.walk(tree)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
            continue
        verb = CLIENT_VERBS.get(node.func.attr)
        resource = resource_argument(node.args[0])
        if verb and resource is not None:
            group, plural = rbac_name(resource)
            yield group, plural, verb


# lightkube method -> RBAC verb for kaito.k8s.lease, whose every API call is on the one Lease.
LEASE_VERBS = {"get": "get", "create": "create", "replace": "update", "close": None}


def lease_calls() -> Iterator[Permission]:
    """The calls kaito.k8s.lease makes on its client (`self.client.<method>(...)`)."""
    tree = ast.parse(inspect.getsource(kaito.k8s.lease))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "client"
        ):
            # A KeyError here is a new kind of call: add its verb, then the chart's Role.
            verb = LEASE_VERBS[node.func.attr]
            if verb is not None:
                yield "coordination.k8s.io", "leases", verb


def applied_kinds() -> Iterator[Permission]:
    """Kube.apply of built objects: a get (whose object is it?), then server-side apply (patch;
    create when the object is new); ConfigMaps are created once and never patched."""
    for path in sorted(Path(kaito.manifests.__file__).parent.glob("*.py")):
        source = path.read_text()
        for (_, kind), resource in resources.RESOURCES.items():
            if f'"kind": "{kind}"' in source and kind != "Workspace":
                group, plural = rbac_name(resource)
                yield group, plural, "get"
                yield group, plural, "create"
                if kind != "ConfigMap":
                    yield group, plural, "patch"


def set_members() -> Iterator[Permission]:
    """The Workspaces an InferenceSet applies (kaito.api.inferenceset builds them)."""
    if '"kind": "Workspace"' in inspect.getsource(kaito.api.inferenceset):
        yield from (("kaito.sh", "workspaces", verb) for verb in ("get", "create", "patch"))


def deleted_kinds() -> Iterator[Permission]:
    """Kube.delete of the planner's ObjectRefs (any module of kaito.reconcile builds them)."""
    sources = sorted(Path(kaito.reconcile.__file__).parent.glob("*.py"))
    trees = [ast.parse(path.read_text()) for path in sources]
    for node in (node for tree in trees for node in ast.walk(tree)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "ObjectRef":
            kind = node.args[1]
            assert isinstance(kind, ast.Constant), "ObjectRef kinds are literals"
            matches = [r for (_, k), r in resources.RESOURCES.items() if k == kind.value]
            group, plural = rbac_name(matches[0])
            yield group, plural, "get"  # whose object is it? (kaito.k8s checks first)
            yield group, plural, "delete"


def watched() -> Iterator[Permission]:
    """kopf lists and watches every resource a handler is registered for."""
    registry = build_registry(Settings(webhook_enabled=True))
    for handler in [
        *registry._watching.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
        *registry._changing.get_all_handlers(),
    ]:
        selector = handler.selector
        assert selector is not None
        yield selector.group or "", str(selector.any_name), "list"
        yield selector.group or "", str(selector.any_name), "watch"


def cached() -> Iterator[Permission]:
    """kaito.k8s.cache lists and watches each cached kind."""
    for kind in kaito.k8s.cache.CHILDREN:
        group, plural = rbac_name(kind.res)
        yield group, plural, "list"
        yield group, plural, "watch"


# kopf lists the namespaces to serve when it is not cluster-wide (KAITO_WATCH_NAMESPACE set).
KOPF_NAMESPACED = {("", "namespaces", "list"), ("", "namespaces", "watch")}


# The tuning pods' RoleBinding names the chart's tuning ClusterRole: `bind` on that one role
# lets the operator grant it without holding its permissions.
GRANTED_ONWARD = {("rbac.authorization.k8s.io", "clusterroles", "bind")}


def used_by_the_code(*, namespaced: bool = False) -> set[Permission]:
    used = {
        *direct_calls(),
        *applied_kinds(),
        *set_members(),
        *deleted_kinds(),
        *watched(),
        *cached(),
        *KOPF,
        *GRANTED_ONWARD,
    }
    return used | KOPF_NAMESPACED if namespaced else used


def rules_of(role: dict[str, Any]) -> set[Permission]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def operator_roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The roles bound to the operator's ServiceAccount (leader election aside)."""
    account = find(objects, "ServiceAccount")["metadata"]["name"]
    bound = {
        (b["roleRef"]["kind"], b["roleRef"]["name"], b["metadata"].get("namespace"))
        for b in objects
        if b["kind"] in ("ClusterRoleBinding", "RoleBinding")
        and any(s["name"] == account for s in b["subjects"])
        and not b["metadata"]["name"].endswith("-leader")
    }
    return [
        o
        for o in objects
        if (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) in bound
    ]


def granted(values: dict[str, Any] | None = None) -> set[Permission]:
    return {p for role in operator_roles(render(values)) for p in rules_of(role)}


def lease_role(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return find(render(values), "Role", "kaito-leader")


def test_the_scan_sees_the_calls_it_should() -> None:
    used = used_by_the_code()
    assert ("", "events", "create") in used
    assert ("kaito.sh", "workspaces/status", "patch") in used
    assert ("karpenter.sh", "nodeclaims", "delete") in used
    assert ("batch", "jobs", "delete") in used
    assert ("", "nodes", "get") in used
    assert ("apps", "statefulsets", "create") in used


def test_the_cluster_role_grants_exactly_what_the_code_uses() -> None:
    used, grants = used_by_the_code(), granted()
    assert sorted(grants - used) == [], "granted but never used"
    assert sorted(used - grants) == [], "used but not granted"


def test_watching_one_namespace_adds_only_the_namespace_list_kopf_needs() -> None:
    used, grants = used_by_the_code(namespaced=True), granted({"watchNamespace": "team-a"})
    assert sorted(grants ^ used) == []


CLUSTER_SCOPED = {"nodeclaims", "nodes", "customresourcedefinitions", "namespaces"}


def test_with_a_watched_namespace_workloads_are_reached_only_through_namespaced_roles() -> None:
    objects = render({"watchNamespace": "team-a"}, namespace="kaito-system")
    cluster = find(objects, "ClusterRole", "kaito")
    assert {r for _, r, _ in rules_of(cluster)} - {"validatingwebhookconfigurations"} == (
        CLUSTER_SCOPED
    )
    workloads = find(objects, "Role", "kaito")
    assert workloads["metadata"]["namespace"] == "team-a"
    assert ("apps", "statefulsets", "patch") in rules_of(workloads)
    templates = find(objects, "Role", "kaito-templates")
    assert templates["metadata"]["namespace"] == "kaito-system"
    assert rules_of(templates) == {("", "configmaps", "get")}


def test_the_operator_cannot_patch_pods_or_config_maps() -> None:
    for values in ({}, {"watchNamespace": "team-a"}):
        grants = granted(values)
        assert ("", "pods", "patch") not in grants
        assert ("", "configmaps", "patch") not in grants
        assert ("", "configmaps", "update") not in grants


def test_the_webhook_configuration_is_the_charts_and_is_patched_only_by_name() -> None:
    objects = render()
    config = find(objects, "ValidatingWebhookConfiguration")
    hooks = {hook["name"]: hook for hook in config["webhooks"]}
    assert sorted(hooks) == [
        "inferenceset.validation.workspace.kaito.sh",
        "workspace.validation.workspace.kaito.sh",
    ]
    for name, hook in hooks.items():
        assert hook["failurePolicy"] == "Fail"
        # kopf serves handler <id> at /<id>; the entry name is <id>.<configuration>.
        assert hook["clientConfig"]["service"]["path"] == "/" + name.split(".")[0]
    webhook_rules = [
        rule
        for role in operator_roles(objects)
        for rule in role["rules"]
        if any(r.endswith("webhookconfigurations") for r in rule["resources"])
    ]
    assert [(rule["verbs"], rule.get("resourceNames")) for rule in webhook_rules] == [
        (["patch"], ["validation.workspace.kaito.sh"])
    ]


def test_a_watched_namespace_limits_the_webhook_to_it() -> None:
    config = find(render({"watchNamespace": "team-a"}), "ValidatingWebhookConfiguration")
    for hook in config["webhooks"]:
        assert hook["namespaceSelector"] == {
            "matchLabels": {"kubernetes.io/metadata.name": "team-a"}
        }


def test_the_tuning_role_only_patches_pods_and_a_policy_narrows_it_to_the_own_pod() -> None:
    objects = render()
    role = find(objects, "ClusterRole", "kaito-tuning")
    assert rules_of(role) == {("", "pods", "patch")}
    policy = find(objects, "ValidatingAdmissionPolicy", "kaito-tuning-own-pod")
    assert policy["spec"]["failurePolicy"] == "Fail"
    checks = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert "authentication.kubernetes.io/pod-name" in checks
    assert ANNOTATION in checks
    binding = find(objects, "ValidatingAdmissionPolicyBinding", "kaito-tuning-own-pod")
    assert binding["spec"] == {"policyName": "kaito-tuning-own-pod", "validationActions": ["Deny"]}
    env = {
        e["name"]: e.get("value")
        for e in find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KAITO_TUNING_CLUSTER_ROLE"] == "kaito-tuning"
    binds = [
        rule for r in operator_roles(objects) for rule in r["rules"] if "bind" in rule["verbs"]
    ]
    assert [rule.get("resourceNames") for rule in binds] == [["kaito-tuning"]]


def test_with_cert_manager_the_operator_cannot_touch_webhook_configurations() -> None:
    grants = granted({"webhook.certManager.enabled": True})
    assert not [g for g in grants if g[1].endswith("webhookconfigurations")]


def test_the_operator_can_never_create_or_delete_webhook_configurations() -> None:
    for values in ({}, {"webhook.certManager.enabled": True}, {"webhook.enabled": False}):
        grants = granted(values)
        assert not [g for g in grants if g[1].endswith("webhookconfigurations") and g[2] != "patch"]


def test_the_operator_has_no_access_to_secrets() -> None:
    assert not [g for g in granted() if g[1] == "secrets"]


def test_the_lease_role_grants_exactly_what_leader_election_calls() -> None:
    used = set(lease_calls())
    assert used == {
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
    }
    role = lease_role()
    grants = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert sorted(grants ^ used) == []
    # The cluster-wide role holds nothing for leases: the Role is in the release namespace only.
    assert not [g for g in granted() if g[1] == "leases"]


def test_the_lease_role_reaches_only_the_operators_lease_and_is_bound_to_its_account() -> None:
    objects = render(namespace="kaito-system")
    role = find(objects, "Role", "kaito-leader")
    assert role["metadata"]["namespace"] == "kaito-system"
    deployment = find(objects, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KAITO_LEADER_ELECTION"] == "true"
    assert env["KAITO_LEADER_ELECTION_NAMESPACE"] == "kaito-system"
    lease = env["KAITO_LEADER_ELECTION_NAME"]
    for rule in role["rules"]:
        # create cannot name its object (RBAC checks it before it exists); the rest can.
        assert rule.get("resourceNames") == (None if rule["verbs"] == ["create"] else [lease])
    binding = find(objects, "RoleBinding", "kaito-leader")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "kaito-leader",
    }
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "kaito-system"}
    ]


def test_without_leader_election_there_is_no_lease_role() -> None:
    objects = render({"leaderElection.enabled": False})
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
