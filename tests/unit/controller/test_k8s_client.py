"""The k8s layer against a recorded fake apiserver: what goes over the wire, and back."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from lightkube import AsyncClient, KubeConfig

from kaito.api.workspace import parse_workspace
from kaito.k8s.client import Kube
from kaito.k8s.ownership import ChildWriteError, NameConflictError, Owner
from kaito.manifests.keys import FIELD_MANAGER
from kaito.operator.controller import Controller
from kaito.operator.settings import Settings
from kaito.reconcile.types import Event, ObjectRef, Plan
from tests.unit.controller.builders import OPTIONS, legacy_tuning

JSON = dict[str, Any]
Handler = Callable[[httpx2.Request], httpx2.Response]


class FakeApiServer:
    """Answers from a table of (method, path) -> (status, body) and records every request."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, JSON]] | None = None) -> None:
        self.routes = routes or {}
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        status, body = self.routes.get((request.method, request.url.path), (200, {}))
        if request.method == "POST" and not body:
            body = json.loads(request.content)  # a create echoes the object
        elif request.method == "PATCH" and not body:
            body = {"apiVersion": "v1", "kind": "Status", "metadata": {}}
        return httpx2.Response(status, json=body)

    def kube(self) -> Kube:
        config = KubeConfig.from_dict(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://apiserver.test"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
        client = AsyncClient(config, transport=httpx2.MockTransport(self))
        return Kube(client)


def not_found() -> tuple[int, JSON]:
    return 404, {"kind": "Status", "apiVersion": "v1", "code": 404, "message": "not found"}


def empty_list(kind: str) -> tuple[int, JSON]:
    return 200, {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {}, "items": []}


OWNER = Owner("0b3d6c0e-uid", "ws", "ns")


def owned(kind: str, name: str, namespace: str | None = "ns", uid: str = OWNER.uid) -> JSON:
    """An object as the apiserver returns it, controlled by the Workspace with `uid`."""
    meta: JSON = {"name": name, "uid": "child-uid", "resourceVersion": "7"}
    if namespace:
        meta["namespace"] = namespace
    meta["ownerReferences"] = [
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "Workspace",
            "name": "ws",
            "uid": uid,
            "controller": True,
        }
    ]
    return {"apiVersion": "v1", "kind": kind, "metadata": meta}


def desired_service(name: str = "ws") -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "ownerReferences": owned("x", "y")["metadata"]["ownerReferences"],
        },
        "spec": {"ports": [{"port": 80}]},
    }


async def test_apply_is_a_forced_server_side_apply_under_the_controller_field_manager() -> None:
    server = FakeApiServer({("GET", "/api/v1/namespaces/ns/services/ws"): not_found()})
    await server.kube().apply(desired_service(), OWNER)
    assert [(r.method, r.url.path) for r in server.requests] == [
        ("GET", "/api/v1/namespaces/ns/services/ws"),
        ("PATCH", "/api/v1/namespaces/ns/services/ws"),
    ]
    request = server.requests[1]
    assert request.headers["content-type"] == "application/apply-patch+yaml"
    assert request.url.params["fieldManager"] == FIELD_MANAGER
    assert request.url.params["force"] == "true"


async def test_an_object_someone_else_controls_is_never_written() -> None:
    path = "/api/v1/namespaces/ns/services/ws"
    foreign = owned("Service", "ws", uid="someone-elses-uid")
    server = FakeApiServer({("GET", path): (200, foreign)})
    with pytest.raises(NameConflictError) as caught:
        await server.kube().apply(desired_service(), OWNER)
    assert [r.method for r in server.requests] == ["GET"]
    assert caught.value.object == "Service ns/ws"
    assert "someone-elses-uid" in caught.value.message


async def test_an_object_without_an_owner_is_not_adopted() -> None:
    path = "/api/v1/namespaces/ns/services/ws"
    unowned = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ws", "namespace": "ns"}}
    server = FakeApiServer({("GET", path): (200, unowned)})
    with pytest.raises(NameConflictError, match="was not created by kaito"):
        await server.kube().apply(desired_service(), OWNER)
    assert [r.method for r in server.requests] == ["GET"]


async def test_an_owned_object_is_applied_over() -> None:
    path = "/api/v1/namespaces/ns/services/ws"
    server = FakeApiServer({("GET", path): (200, owned("Service", "ws"))})
    await server.kube().apply(desired_service(), OWNER)
    assert [r.method for r in server.requests] == ["GET", "PATCH"]


async def test_config_maps_are_created_once_and_never_patched() -> None:
    path = "/api/v1/namespaces/ns/configmaps/ws-inference-config"
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "ws-inference-config",
            "namespace": "ns",
            "ownerReferences": owned("x", "y")["metadata"]["ownerReferences"],
        },
        "data": {"k": "v"},
    }
    fresh = FakeApiServer({("GET", path): not_found()})
    await fresh.kube().apply(config_map, OWNER)
    assert [(r.method, r.url.path) for r in fresh.requests][-1] == (
        "POST",
        "/api/v1/namespaces/ns/configmaps",
    )
    existing = FakeApiServer({("GET", path): (200, owned("ConfigMap", "ws-inference-config"))})
    await existing.kube().apply(config_map, OWNER)
    assert [r.method for r in existing.requests] == ["GET"]


async def test_an_api_refusal_names_the_object_and_says_what_the_apiserver_said() -> None:
    path = "/api/v1/namespaces/ns/services/ws"
    refusal = {"kind": "Status", "apiVersion": "v1", "code": 422, "message": "spec.ports: bad"}
    server = FakeApiServer({("GET", path): not_found(), ("PATCH", path): (422, refusal)})
    with pytest.raises(ChildWriteError) as caught:
        await server.kube().apply(desired_service(), OWNER)
    assert caught.value.reason == "Invalid"
    assert caught.value.message == "apply Service ns/ws failed (422): spec.ports: bad"


async def test_nodeclaims_are_applied_cluster_scoped_and_owned_by_their_labels() -> None:
    path = "/apis/karpenter.sh/v1/nodeclaims/ws1"
    labels = {"kaito.sh/workspace": "ws", "kaito.sh/workspacenamespace": "ns"}
    claim = {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": {"name": "ws1", "labels": labels},
    }
    server = FakeApiServer({("GET", path): not_found()})
    await server.kube().apply(claim, OWNER)
    assert server.requests[-1].url.path == path
    other = {**claim, "metadata": {"name": "ws1", "labels": {**labels, "kaito.sh/workspace": "b"}}}
    taken = FakeApiServer({("GET", path): (200, other)})
    with pytest.raises(NameConflictError, match="labelled for Workspace ns/b"):
        await taken.kube().apply(claim, OWNER)


async def test_status_writes_null_the_keys_the_planner_dropped() -> None:
    server = FakeApiServer()
    await server.kube().write_status(
        "ns", "ws", {"state": "Ready", "performance": {"x": 1}}, {"state": "NotReady"}
    )
    (request,) = server.requests
    assert request.url.path == "/apis/kaito.sh/v1beta1/namespaces/ns/workspaces/ws/status"
    assert request.headers["content-type"] == "application/merge-patch+json"
    assert json.loads(request.content) == {"status": {"performance": None, "state": "NotReady"}}


async def test_deleting_something_already_gone_is_fine() -> None:
    path = "/apis/batch/v1/namespaces/ns/jobs/ws"
    server = FakeApiServer({("GET", path): not_found(), ("DELETE", path): not_found()})
    await server.kube().delete(ObjectRef("batch/v1", "Job", "ws", "ns"), OWNER)
    assert [r.method for r in server.requests] == ["GET"]


async def test_only_an_owned_object_is_deleted() -> None:
    path = "/apis/batch/v1/namespaces/ns/jobs/ws"
    ref = ObjectRef("batch/v1", "Job", "ws", "ns", propagation="Foreground")
    mine = FakeApiServer({("GET", path): (200, owned("Job", "ws"))})
    await mine.kube().delete(ref, OWNER)
    assert mine.requests[-1].method == "DELETE"
    assert mine.requests[-1].url.params["propagationPolicy"] == "Foreground"
    theirs = FakeApiServer({("GET", path): (200, owned("Job", "ws", uid="other"))})
    with pytest.raises(NameConflictError):
        await theirs.kube().delete(ref, OWNER)
    assert [r.method for r in theirs.requests] == ["GET"]


async def test_observe_reads_the_workspaces_children_and_config_maps() -> None:
    ns = "default"
    template = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "qlora-params-template", "namespace": "kaito-system"},
        "data": {"training_config.yaml": "training_config: {}\n"},
    }
    server = FakeApiServer(
        {
            ("GET", "/apis/karpenter.sh/v1/nodeclaims"): empty_list("NodeClaim"),
            ("GET", "/api/v1/nodes"): empty_list("Node"),
            ("GET", f"/api/v1/namespaces/{ns}/services"): empty_list("Service"),
            ("GET", f"/api/v1/namespaces/{ns}/pods"): empty_list("Pod"),
            (
                "GET",
                f"/apis/apps/v1/namespaces/{ns}/controllerrevisions",
            ): empty_list("ControllerRevision"),
            ("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/workspace-tuning-phi-3"): not_found(),
            (
                "GET",
                f"/apis/batch/v1/namespaces/{ns}/jobs/workspace-tuning-phi-3-preflight",
            ): not_found(),
            (
                "GET",
                f"/api/v1/namespaces/{ns}/persistentvolumeclaims/workspace-tuning-phi-3-results",
            ): not_found(),
            ("GET", f"/api/v1/namespaces/{ns}/configmaps/qlora-params-template"): not_found(),
            (
                "GET",
                "/api/v1/namespaces/kaito-system/configmaps/qlora-params-template",
            ): (200, template),
        }
    )
    workspace = parse_workspace(legacy_tuning())
    observed = await server.kube().observe(workspace, OPTIONS)
    assert observed.job is None
    assert observed.config_maps == {
        ("kaito-system", "qlora-params-template"): {"training_config.yaml": "training_config: {}\n"}
    }
    claims = next(r for r in server.requests if r.url.path.endswith("/nodeclaims"))
    assert claims.url.params["labelSelector"] == (
        "kaito.sh/workspace=workspace-tuning-phi-3,kaito.sh/workspacenamespace=default"
    )
    nodes = next(r for r in server.requests if r.url.path == "/api/v1/nodes")
    assert nodes.url.params["labelSelector"] == "app=tuning-phi-3"


async def test_a_failed_nodeclaim_does_not_stop_the_others_and_is_reported() -> None:
    failing = "/apis/karpenter.sh/v1/nodeclaims/ws-bad"
    server = FakeApiServer(
        {
            ("GET", failing): not_found(),
            ("GET", "/apis/karpenter.sh/v1/nodeclaims/ws-good"): not_found(),
            ("GET", "/apis/karpenter.sh/v1/nodeclaims"): empty_list("NodeClaim"),
            ("PATCH", failing): (
                422,
                {"kind": "Status", "apiVersion": "v1", "code": 422, "message": "invalid"},
            ),
        }
    )
    controller = Controller(server.kube(), Settings())
    claims = [
        {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": n}}
        for n in ("ws-bad", "ws-good")
    ]
    body = legacy_tuning()
    plan = Plan(
        apply=tuple(claims),
        events=(
            Event("Normal", "NodeClaimCreated", "Creating ws-bad", ("NodeClaim", "ws-bad")),
            Event("Normal", "NodeClaimCreated", "Creating ws-good", ("NodeClaim", "ws-good")),
            Event("Normal", "Unattached", "sent whatever was applied"),
        ),
    )
    with pytest.raises(ChildWriteError, match="NodeClaim ws-bad failed \\(422\\): invalid"):
        await controller.execute(body, plan)
    paths = [(r.method, r.url.path) for r in server.requests]
    assert ("PATCH", "/apis/karpenter.sh/v1/nodeclaims/ws-good") in paths
    events = [json.loads(r.content) for r in server.requests if r.url.path.endswith("/events")]
    # The failure ends the pass (the loop reports it in the status); the claims that were
    # applied still went out.
    assert [e["reason"] for e in events] == ["NodeClaimCreationFailed", "NodeClaimCreated"]
    assert "ws-good" in events[1]["message"]
    assert events[0]["involvedObject"]["name"] == "workspace-tuning-phi-3"
