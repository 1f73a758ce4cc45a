"""The k8s layer against a recorded fake apiserver: what goes over the wire, and back."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
from lightkube import AsyncClient, KubeConfig

from kaito.api.workspace import parse_workspace
from kaito.k8s.client import Kube
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


async def test_apply_is_a_forced_server_side_apply_under_the_controller_field_manager() -> None:
    server = FakeApiServer()
    kube = server.kube()
    await kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "ns"},
            "data": {"k": "v"},
        }
    )
    (request,) = server.requests
    assert request.method == "PATCH"
    assert request.url.path == "/api/v1/namespaces/ns/configmaps/c"
    assert request.headers["content-type"] == "application/apply-patch+yaml"
    assert request.url.params["fieldManager"] == FIELD_MANAGER
    assert request.url.params["force"] == "true"


async def test_nodeclaims_are_applied_cluster_scoped() -> None:
    server = FakeApiServer()
    await server.kube().apply(
        {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "ws1"}}
    )
    assert server.requests[0].url.path == "/apis/karpenter.sh/v1/nodeclaims/ws1"


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
    server = FakeApiServer({("DELETE", path): not_found()})
    await server.kube().delete(ObjectRef("batch/v1", "Job", "ws", "ns", propagation="Foreground"))
    assert server.requests[0].url.params["propagationPolicy"] == "Foreground"


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
            ("PATCH", failing): (
                422,
                {"kind": "Status", "apiVersion": "v1", "code": 422, "message": "invalid"},
            )
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
    await controller.execute(body, plan)
    paths = [(r.method, r.url.path) for r in server.requests]
    assert ("PATCH", "/apis/karpenter.sh/v1/nodeclaims/ws-good") in paths
    events = [json.loads(r.content) for r in server.requests if r.url.path.endswith("/events")]
    assert [e["reason"] for e in events] == [
        "NodeClaimCreationFailed",
        "NodeClaimCreated",
        "Unattached",
    ]
    assert "ws-good" in events[1]["message"]
    assert events[0]["involvedObject"]["name"] == "workspace-tuning-phi-3"
