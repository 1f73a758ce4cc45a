"""What keeps the operator cheap per Workspace: one GET per child per pass, no pass for its own
status write, no global lock for plans without NodeClaims, one pass for a burst of events."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from kaito.api.workspace import parse_workspace
from kaito.k8s.ownership import NameConflictError
from kaito.manifests.inference import default_config_map_name
from kaito.operator.controller import CLAIM_COUNT_TTL_S, Controller
from kaito.operator.controller import _inputs as inputs_of
from kaito.operator.failures import NodeClaimLimitError
from kaito.operator.settings import Settings
from kaito.reconcile.types import Observed, Plan
from tests.unit.controller.builders import OPTIONS, stored
from tests.unit.controller.test_failures import claims_list
from tests.unit.controller.test_k8s_client import (
    FakeApiServer,
    desired_service,
    empty_list,
    not_found,
)

JSON = dict[str, Any]


def inference_body() -> JSON:
    body = stored(
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "Workspace",
            "metadata": {"name": "ws", "namespace": "ns", "resourceVersion": "10"},
            "resource": {
                "instanceType": "Standard_NC24ads_A100_v4",
                "labelSelector": {"matchLabels": {"app": "ws"}},
            },
            "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        },
        namespace="ns",
    )
    body["metadata"]["uid"] = "0b3d6c0e-uid"
    return body


async def test_observe_gets_each_named_child_once() -> None:
    server = FakeApiServer(
        {
            ("GET", "/apis/apps/v1/namespaces/ns/statefulsets/ws"): not_found(),
            ("GET", "/api/v1/namespaces/ns/services/ws"): not_found(),
            ("GET", "/api/v1/namespaces/ns/services/ws-headless"): not_found(),
            ("GET", f"/api/v1/namespaces/ns/configmaps/{default_config_map_name('ws')}"): (
                not_found()
            ),
            ("GET", "/apis/karpenter.sh/v1/nodeclaims"): empty_list("NodeClaim"),
            ("GET", "/api/v1/nodes"): empty_list("Node"),
            ("GET", "/api/v1/namespaces/ns/services"): empty_list("Service"),
            ("GET", "/api/v1/namespaces/ns/pods"): empty_list("Pod"),
            (
                "GET",
                "/apis/apps/v1/namespaces/ns/controllerrevisions",
            ): empty_list("ControllerRevision"),
        }
    )
    workspace = parse_workspace(inference_body())
    await server.kube().observe(workspace, OPTIONS)
    gets = Counter(r.url.path for r in server.requests if r.method == "GET")
    # The name check and the planner both read the StatefulSet and the default ConfigMap.
    assert gets["/apis/apps/v1/namespaces/ns/statefulsets/ws"] == 1
    config_maps = [p for p in gets if "/configmaps/" in p]
    assert config_maps and all(gets[p] == 1 for p in config_maps)
    assert max(gets.values()) == 1


async def test_services_found_by_label_are_not_fetched_again_by_name() -> None:
    own = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "ws",
            "namespace": "ns",
            "ownerReferences": [
                {
                    "apiVersion": "kaito.sh/v1beta1",
                    "kind": "Workspace",
                    "name": "ws",
                    "uid": "0b3d6c0e-uid",
                    "controller": True,
                }
            ],
        },
    }
    listed = {"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": [own]}
    server = FakeApiServer(
        {
            ("GET", "/apis/apps/v1/namespaces/ns/statefulsets/ws"): not_found(),
            ("GET", "/api/v1/namespaces/ns/services/ws-headless"): not_found(),
            ("GET", f"/api/v1/namespaces/ns/configmaps/{default_config_map_name('ws')}"): (
                not_found()
            ),
            ("GET", "/apis/karpenter.sh/v1/nodeclaims"): empty_list("NodeClaim"),
            ("GET", "/api/v1/nodes"): empty_list("Node"),
            ("GET", "/api/v1/namespaces/ns/services"): (200, listed),
            ("GET", "/api/v1/namespaces/ns/pods"): empty_list("Pod"),
            (
                "GET",
                "/apis/apps/v1/namespaces/ns/controllerrevisions",
            ): empty_list("ControllerRevision"),
        }
    )
    observed = await server.kube().observe(parse_workspace(inference_body()), OPTIONS)
    assert [s["metadata"]["name"] for s in observed.services] == ["ws"]
    paths = [r.url.path for r in server.requests]
    assert "/api/v1/namespaces/ns/services/ws" not in paths
    assert "/api/v1/namespaces/ns/services/ws-headless" in paths

    # One the label list shows but another owner controls is still a conflict.
    own["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    with pytest.raises(NameConflictError, match="Service ns/ws already exists"):
        await server.kube().observe(parse_workspace(inference_body()), OPTIONS)


def one_claim(name: str) -> Plan:
    return Plan(
        apply=({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": name}},)
    )


async def test_a_burst_of_claims_lists_the_total_once_and_refuses_on_a_fresh_list() -> None:
    routes = {("GET", "/apis/karpenter.sh/v1/nodeclaims"): claims_list(60)}
    for index in range(5):
        routes[("GET", f"/apis/karpenter.sh/v1/nodeclaims/c-{index}")] = not_found()
    server = FakeApiServer(routes)
    controller = Controller(server.kube(), Settings(max_nodeclaims_total=64))

    def lists() -> int:
        return sum(
            1
            for r in server.requests
            if r.method == "GET" and r.url.path == "/apis/karpenter.sh/v1/nodeclaims"
        )

    for index in range(4):  # 60 listed + 4 created: exactly the limit
        await controller.execute(inference_body(), one_claim(f"c-{index}"))
    assert lists() == 1
    # The 65th: the tally says no, so the total is listed again before refusing. The
    # apiserver still shows 60 (the list lags, or claims were deleted): then it goes out.
    await controller.execute(inference_body(), one_claim("c-4"))
    assert lists() == 2
    assert controller.claims_counted is not None and controller.claims_counted[0] == 61
    # A list that does show the limit reached refuses.
    routes[("GET", "/apis/karpenter.sh/v1/nodeclaims")] = claims_list(64)
    controller.claims_counted = (64, controller.claims_counted[1])
    with pytest.raises(NodeClaimLimitError):
        await controller.execute(inference_body(), one_claim("c-5"))
    assert lists() == 3


async def test_the_claim_tally_is_listed_again_once_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = {
        ("GET", "/apis/karpenter.sh/v1/nodeclaims"): claims_list(1),
        ("GET", "/apis/karpenter.sh/v1/nodeclaims/a"): not_found(),
        ("GET", "/apis/karpenter.sh/v1/nodeclaims/b"): not_found(),
    }
    server = FakeApiServer(routes)
    controller = Controller(server.kube(), Settings(max_nodeclaims_total=64))
    await controller.execute(inference_body(), one_claim("a"))
    assert controller.claims_counted is not None
    total, listed_at = controller.claims_counted
    controller.claims_counted = (total, listed_at - CLAIM_COUNT_TTL_S - 0.1)
    await controller.execute(inference_body(), one_claim("b"))
    listed = [r for r in server.requests if r.url.path == "/apis/karpenter.sh/v1/nodeclaims"]
    assert len(listed) == 2


def status_patch_answer(version: str) -> tuple[int, JSON]:
    return 200, {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "ws", "namespace": "ns", "resourceVersion": version},
    }


async def test_the_event_of_its_own_status_write_wakes_nobody() -> None:
    server = FakeApiServer(
        {
            ("PATCH", "/apis/kaito.sh/v1beta1/namespaces/ns/workspaces/ws/status"): (
                status_patch_answer("11")
            ),
        }
    )
    controller = Controller(server.kube(), Settings())
    body = inference_body()
    wake = controller.wakeup("ns", "ws")
    version = await controller.execute(body, Plan(status={"state": "Pending"}))
    assert version == "11"
    controller.own_writes[("ns", "ws")] = ("11", inputs_of(body))

    echoed = copy.deepcopy(body)
    echoed["metadata"]["resourceVersion"] = "11"
    echoed["status"] = {"state": "Pending"}
    controller.workspace_changed(echoed)
    assert not wake.is_set()

    # The next event at another version is news (a user's edit, kopf's own patch).
    controller.own_writes[("ns", "ws")] = ("11", inputs_of(body))
    later = copy.deepcopy(echoed)
    later["metadata"]["resourceVersion"] = "12"
    controller.workspace_changed(later)
    assert wake.is_set()


async def test_a_status_write_racing_a_spec_change_still_wakes() -> None:
    controller = Controller(None, Settings())  # type: ignore[arg-type]
    body = inference_body()
    wake = controller.wakeup("ns", "ws")
    controller.own_writes[("ns", "ws")] = ("11", inputs_of(body))
    # kopf delivered only the latest body: our write's version, over an edited spec.
    edited = copy.deepcopy(body)
    edited["metadata"]["resourceVersion"] = "11"
    edited["metadata"]["generation"] = 2
    edited["inference"]["preset"]["name"] = "phi-3-medium-4k-instruct"
    controller.workspace_changed(edited)
    assert wake.is_set()

    wake.clear()
    controller.own_writes[("ns", "ws")] = ("11", inputs_of(body))
    annotated = copy.deepcopy(body)
    annotated["metadata"]["resourceVersion"] = "11"
    annotated["metadata"]["annotations"] = {"kaito.sh/something": "new"}
    controller.workspace_changed(annotated)
    assert wake.is_set()


async def test_a_pass_records_its_status_write_and_the_body_it_read() -> None:
    class Recording(Controller):
        async def execute(self, body: Mapping[str, Any], result: Plan) -> str | None:
            return "11"

    controller = Recording(None, Settings())  # type: ignore[arg-type]
    body = inference_body()
    controller.kube = _NoReads()  # type: ignore[assignment]
    await controller.reconcile(body)
    assert controller.own_writes[("ns", "ws")] == ("11", inputs_of(body))


class _NoReads:
    """A Kube whose observation finds no children."""

    async def observe(self, *args: Any, **kwargs: Any) -> Observed:
        return Observed()


async def test_a_plan_without_nodeclaims_does_not_wait_for_the_claims_lock() -> None:
    server = FakeApiServer({("GET", "/api/v1/namespaces/ns/services/ws"): not_found()})
    controller = Controller(server.kube(), Settings())
    body = inference_body()
    async with controller.claims_lock:  # another workspace is creating its claims
        await asyncio.wait_for(
            controller.execute(body, Plan(apply=(desired_service(),))), timeout=5
        )
    assert ("PATCH", "/api/v1/namespaces/ns/services/ws") in [
        (r.method, r.url.path) for r in server.requests
    ]


async def test_a_plan_with_nodeclaims_waits_for_the_claims_lock() -> None:
    server = FakeApiServer({("GET", "/apis/karpenter.sh/v1/nodeclaims/c"): not_found()})
    controller = Controller(server.kube(), Settings(max_nodeclaims_total=0))
    claim = {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "c"}}
    async with controller.claims_lock:
        task = asyncio.create_task(controller.execute(inference_body(), Plan(apply=(claim,))))
        await asyncio.sleep(0.2)
        assert not task.done()
    await asyncio.wait_for(task, timeout=5)


async def test_events_while_waiting_for_a_slot_are_read_by_that_pass() -> None:
    passes: list[int] = []

    class Counting(Controller):
        async def execute(self, body: Mapping[str, Any], result: Plan) -> str | None:
            passes.append(1)
            return None

    controller = Counting(_NoReads(), Settings(max_concurrent_reconciles=1))  # type: ignore[arg-type]
    body = inference_body()
    wake = controller.wakeup("ns", "ws")
    async with controller.semaphore:  # every slot busy
        task = asyncio.create_task(controller.reconcile(body))
        await asyncio.sleep(0.05)
        wake.set()  # a child changed while the pass waited: it reads that change
    await asyncio.wait_for(task, timeout=5)
    assert passes == [1]
    assert not wake.is_set()
