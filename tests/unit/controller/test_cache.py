"""The watch-fed child cache: what it holds, what it serves, and that it never decides a write."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import Pod, Service

from kaito.k8s.cache import CHILDREN, Cache, Informer, Kind, Store, covers, matches
from kaito.k8s.client import Kube
from kaito.k8s.ownership import NameConflictError
from kaito.k8s.resources import NodeClaim
from kaito.manifests.keys import FIELD_MANAGER, LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE
from kaito.operator.controller import Controller
from kaito.operator.settings import Settings
from tests.unit.controller.test_k8s_client import OWNER, FakeApiServer, not_found, owned

JSON = dict[str, Any]
STS_PATH = "/apis/apps/v1/namespaces/ns/statefulsets/ws"


def obj(name: str, *, namespace: str | None = "ns", version: str = "1", **labels: str) -> JSON:
    meta: JSON = {"name": name, "resourceVersion": version, "labels": labels}
    if namespace:
        meta["namespace"] = namespace
    return {"metadata": meta}


def sts_store() -> Store:
    store = Store("apps/v1", "StatefulSet", labels={LABEL_WORKSPACE: None}, index=LABEL_WORKSPACE)
    return store


# --- pure parts ----------------------------------------------------------------------------


def test_selectors_match_by_value_or_by_presence() -> None:
    labels = {"a": "1", "b": "2"}
    assert matches(labels, None)
    assert matches(labels, {"a": "1", "b": None})
    assert not matches(labels, {"a": "2"})
    assert not matches(labels, {"c": None})


def test_a_store_serves_only_queries_within_its_selector() -> None:
    held = {LABEL_WORKSPACE: None}
    assert covers({LABEL_WORKSPACE: "ws"}, held)
    assert covers({LABEL_WORKSPACE: None, "x": "y"}, held)
    # Objects without the label are not in the store: a query for them must go to the API.
    assert not covers({"app": "x"}, held)
    assert not covers(None, held)
    assert covers(None, None)


async def test_a_relist_replaces_everything_and_events_follow() -> None:
    store = sts_store()
    assert not store.synced.is_set()
    store.replace([obj("a", **{LABEL_WORKSPACE: "a"}), obj("b", **{LABEL_WORKSPACE: "b"})], "10")
    assert store.synced.is_set()
    assert store.get("ns", "a") is not None
    # List items come without apiVersion and kind; the uncached reads have them.
    assert store.get("ns", "a") == {
        **obj("a", **{LABEL_WORKSPACE: "a"}),
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
    }
    store.event("DELETED", obj("a", version="11", **{LABEL_WORKSPACE: "a"}))
    store.event("ADDED", obj("c", version="12", **{LABEL_WORKSPACE: "c"}))
    assert store.get("ns", "a") is None
    assert store.resource_version == "12"
    store.replace([obj("c", **{LABEL_WORKSPACE: "c"})], "20")
    assert store.get("ns", "b") is None
    assert [o["metadata"]["name"] for o in store.list("ns")] == ["c"]


def test_lists_by_the_indexed_label_follow_relabels_and_namespaces() -> None:
    store = sts_store()
    store.replace([], "1")
    store.event("ADDED", obj("x", **{LABEL_WORKSPACE: "ws"}))
    store.event("ADDED", obj("x", namespace="other", **{LABEL_WORKSPACE: "ws"}))
    assert len(store.list(None, {LABEL_WORKSPACE: "ws"})) == 2
    assert len(store.list("ns", {LABEL_WORKSPACE: "ws"})) == 1
    store.event("MODIFIED", obj("x", version="2", **{LABEL_WORKSPACE: "other"}))
    assert [o["metadata"]["namespace"] for o in store.list(None, {LABEL_WORKSPACE: "ws"})] == [
        "other"
    ]
    assert len(store.list("ns", {LABEL_WORKSPACE: "other"})) == 1
    assert store.by_label.keys() == {"ws", "other"}
    store.event("DELETED", obj("x", namespace="other", **{LABEL_WORKSPACE: "ws"}))
    assert store.by_label.keys() == {"other"}


def test_our_own_write_is_kept_unless_the_watch_already_brought_a_newer_one() -> None:
    store = sts_store()
    store.replace([obj("ws", version="5", **{LABEL_WORKSPACE: "ws"})], "5")
    written = obj("ws", version="7", **{LABEL_WORKSPACE: "ws"})
    written["metadata"]["managedFields"] = [{"manager": FIELD_MANAGER}]
    store.wrote(written)
    assert "managedFields" not in store.get("ns", "ws")["metadata"]  # type: ignore[index]
    assert store.get("ns", "ws")["metadata"]["resourceVersion"] == "7"  # type: ignore[index]
    store.wrote(obj("ws", version="6", **{LABEL_WORKSPACE: "ws"}))  # older: ignored
    assert store.get("ns", "ws")["metadata"]["resourceVersion"] == "7"  # type: ignore[index]
    store.wrote(obj("unlabelled", version="9"))  # outside the selector: never held
    assert store.get("ns", "unlabelled") is None


# --- Kube with a cache ---------------------------------------------------------------------


def cached_kube(server: FakeApiServer, *stores: tuple[str, Store]) -> Kube:
    kube = server.kube()
    cache = Cache(kube.client, kinds=CHILDREN)
    for kind, store in stores:
        cache.informers[kind].store = store
    kube.cache = cache
    return kube


async def test_reads_come_from_the_cache_and_misses_from_the_apiserver() -> None:
    server = FakeApiServer({("GET", STS_PATH): not_found()})
    store = sts_store()
    store.replace(
        [
            {
                **owned("StatefulSet", "other"),
                "metadata": {
                    "name": "other",
                    "namespace": "ns",
                    "labels": {LABEL_WORKSPACE: "other"},
                },
            }
        ],
        "3",
    )
    kube = cached_kube(server, ("StatefulSet", store))
    assert await kube.read(StatefulSet, "other", "ns") is not None
    assert server.requests == []
    # Not in the cache: the store holds labelled objects only, so ask.
    assert await kube.read(StatefulSet, "ws", "ns") is None
    assert [r.url.path for r in server.requests] == [STS_PATH]


async def test_a_cache_that_has_not_listed_yet_is_not_used() -> None:
    server = FakeApiServer({("GET", STS_PATH): not_found()})
    kube = cached_kube(server)
    assert await kube.read(StatefulSet, "ws", "ns") is None
    pods = "/api/v1/namespaces/ns/pods"
    server.routes[("GET", pods)] = (200, {"kind": "PodList", "metadata": {}, "items": []})
    await kube.read_list(Pod, namespace="ns", labels={LABEL_WORKSPACE: "ws"})
    assert [r.url.path for r in server.requests] == [STS_PATH, pods]


async def test_lists_outside_the_cached_selector_go_to_the_apiserver() -> None:
    server = FakeApiServer()
    pods = Store("v1", "Pod", labels={LABEL_WORKSPACE: None})
    pods.replace([], "1")
    claims = Store("karpenter.sh/v1", "NodeClaim", labels={LABEL_WORKSPACE: None})
    claims.replace(
        [obj("c", namespace=None, **{LABEL_WORKSPACE: "ws", LABEL_WORKSPACE_NAMESPACE: "ns"})], "1"
    )
    kube = cached_kube(server, ("Pod", pods), ("NodeClaim", claims))
    assert await kube.read_list(Pod, namespace="ns", labels={LABEL_WORKSPACE: "ws"}) == []
    assert len(await kube.nodeclaims_of("ns", "ws")) == 1
    assert await kube.nodeclaims_of("other", "ws") == []
    assert server.requests == []
    server.routes[("GET", "/api/v1/namespaces/ns/pods")] = (
        200,
        {"kind": "PodList", "metadata": {}, "items": []},
    )
    await kube.read_list(Pod, namespace="ns", labels={"app": "x"})
    assert len(server.requests) == 1


async def test_a_stale_cache_never_lets_a_write_over_someone_elses_object() -> None:
    """The cache says the StatefulSet is ours; meanwhile someone else's replaced it. The write
    reads the object fresh and refuses."""
    ours = owned("StatefulSet", "ws")
    ours["metadata"]["labels"] = {LABEL_WORKSPACE: "ws"}
    store = sts_store()
    store.replace([ours], "7")
    foreign = owned("StatefulSet", "ws", uid="someone-elses-uid")
    server = FakeApiServer({("GET", STS_PATH): (200, foreign)})
    kube = cached_kube(server, ("StatefulSet", store))
    desired = {**ours, "apiVersion": "apps/v1", "spec": {"replicas": 1}}
    with pytest.raises(NameConflictError):
        await kube.apply(desired, OWNER)
    assert [r.method for r in server.requests] == ["GET"]


async def test_a_stale_cache_that_misses_a_created_object_still_checks_it() -> None:
    """The cache has not seen the StatefulSet someone else just created: the planner's read
    asks the apiserver (a labelled cache's miss proves nothing) and the write is refused."""
    foreign = owned("StatefulSet", "ws", uid="someone-elses-uid")
    server = FakeApiServer({("GET", STS_PATH): (200, foreign)})
    store = sts_store()
    store.replace([], "1")
    kube = cached_kube(server, ("StatefulSet", store))
    assert await kube.read(StatefulSet, "ws", "ns") == {**foreign, "apiVersion": "v1"}
    with pytest.raises(NameConflictError):
        await kube.apply({**owned("StatefulSet", "ws"), "apiVersion": "apps/v1"}, OWNER)


async def test_an_applied_object_is_written_through_to_the_cache() -> None:
    applied = owned("StatefulSet", "ws")
    applied["apiVersion"] = "apps/v1"
    applied["metadata"]["labels"] = {LABEL_WORKSPACE: "ws"}
    server = FakeApiServer({("GET", STS_PATH): not_found(), ("PATCH", STS_PATH): (200, applied)})
    store = sts_store()
    store.replace([], "1")
    kube = cached_kube(server, ("StatefulSet", store))
    await kube.apply(applied, OWNER)
    assert store.get("ns", "ws") is not None
    requests = len(server.requests)
    assert await kube.read(StatefulSet, "ws", "ns") is not None
    assert len(server.requests) == requests


async def test_uncached_reads_are_plain_json_with_kind_and_api_version() -> None:
    service = {"metadata": {"name": "ws", "namespace": "ns"}, "spec": {"ports": []}}
    server = FakeApiServer(
        {("GET", "/api/v1/namespaces/ns/services"): (200, {"metadata": {}, "items": [service]})}
    )
    found = await server.kube().list_json(Service, namespace="ns")
    assert found == [{**service, "apiVersion": "v1", "kind": "Service"}]
    assert type(found[0]) is dict


# --- the informer ----------------------------------------------------------------------------


class WatchingApiServer:
    """Lists, then watch streams from a script; later watches end in 410 Gone."""

    def __init__(self, items: list[JSON], events: list[tuple[str, JSON]]) -> None:
        self.items = items
        self.events = events
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if request.url.params.get("watch") in ("true", "1", "True"):
            lines = [{"type": op, "object": body} for op, body in self.events]
            self.events = []
            if not lines:
                gone = {"kind": "Status", "apiVersion": "v1", "code": 410, "message": "gone"}
                lines = [{"type": "ERROR", "object": gone}]
            return httpx2.Response(200, content="\n".join(json.dumps(x) for x in lines) + "\n")
        body = {"kind": "List", "metadata": {"resourceVersion": "5"}, "items": self.items}
        return httpx2.Response(200, json=body)


async def test_the_informer_lists_watches_wakes_and_relists_after_gone() -> None:
    labels = {LABEL_WORKSPACE: "ws"}
    first = obj("ws-0", **labels)
    second = {**obj("ws-1", version="6", **labels), "kind": "Pod", "apiVersion": "v1"}
    server = WatchingApiServer([first], [("ADDED", second), ("DELETED", first)])
    seen: list[tuple[str, str, str]] = []
    informer = Informer(
        FakeApiServer().kube().client,
        Kind(Pod, {LABEL_WORKSPACE: None}),
        listener=lambda kind, op, body: seen.append((kind, op, body["metadata"]["name"])),
    )
    informer.client._client._client._transport = httpx2.MockTransport(server)  # type: ignore[attr-defined]
    task = asyncio.ensure_future(informer.run())
    try:
        for _ in range(200):
            lists = [r for r in server.requests if "watch" not in r.url.params]
            if len(lists) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert seen == [("Pod", "ADDED", "ws-1"), ("Pod", "DELETED", "ws-0")]
    assert [o["metadata"]["name"] for o in informer.store.list("ns")] == ["ws-0"]  # relisted
    first_list, watch = server.requests[0], server.requests[1]
    assert first_list.url.path == "/api/v1/pods"
    assert first_list.url.params["labelSelector"] == LABEL_WORKSPACE
    assert watch.url.params["resourceVersion"] == "5"
    assert len(lists) >= 2  # the 410 made it list again


async def test_one_namespace_is_watched_in_that_namespace_only() -> None:
    cache = Cache(FakeApiServer().kube().client, namespace="team")
    assert cache.informers["Pod"].namespace == "team"
    assert cache.informers["NodeClaim"].namespace is None  # cluster-scoped
    for informer in cache.informers.values():
        informer.store.replace([], "1")
    assert cache.store("Pod", "team") is not None
    assert cache.store("Pod", "elsewhere") is None
    assert cache.store("NodeClaim") is not None


async def test_a_child_event_wakes_its_workspace() -> None:
    controller = Controller(FakeApiServer().kube(), Settings())
    wake = controller.wakeup("ns", "ws")
    claim = obj("c", namespace=None, **{LABEL_WORKSPACE: "ws", LABEL_WORKSPACE_NAMESPACE: "ns"})
    controller.child_event("NodeClaim", "ADDED", claim)
    controller.child_event("NodeClaim", "MODIFIED", claim)  # already awake: not counted
    assert wake.is_set()
    assert controller.stats.woken == {"NodeClaim": 1}
    wake.clear()
    controller.child_event("Pod", "MODIFIED", obj("p", **{LABEL_WORKSPACE: "other"}))
    assert not wake.is_set()
    assert controller.stats.woken == {"NodeClaim": 1}


def test_the_cached_kinds_are_the_ones_the_operator_may_watch() -> None:
    assert {kind.name for kind in CHILDREN} == {"NodeClaim", "StatefulSet", "Job", "Pod"}
    assert CHILDREN[0].res is NodeClaim
