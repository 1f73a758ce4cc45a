"""A watch-fed cache of the Workspaces' children: each kind listed once, then followed by watch."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lightkube import ALL_NS, AsyncClient
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import GenericGlobalResource, GenericNamespacedResource
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod

from kaito.k8s.resources import NodeClaim
from kaito.manifests.keys import LABEL_WORKSPACE

# Measured on the operator bench (bench/operator): per pass the operator listed the workspace's
# NodeClaims and Pods and read its StatefulSet (or Jobs) with a request each, and kopf watched
# the same kinds only to wake the workspace, each event going through kopf's per-object
# processing. One list and one watch per kind feed both the reads and the wakeups here.
#
# Staleness never causes a wrong write: the cache serves the planner's reads (and the
# name check's), while every write still reads the object fresh first (Kube.apply,
# Kube.delete: ownership). A stale read at worst re-applies an unchanged object.

JSON = dict[str, Any]
Labels = Mapping[str, str | None]  # a label mapped to None only has to exist
Listener = Callable[[str, str, JSON], None]  # (kind, ADDED | MODIFIED | DELETED, object)
log = logging.getLogger("kaito.k8s.cache")
RETRY_S = 1.0
RETRY_MAX_S = 30.0
WATCH_TIMEOUT_S = 300


def matches(labels: Mapping[str, str], selector: Labels | None) -> bool:
    """Does an object with `labels` match an equality/exists selector?"""
    if not selector:
        return True
    return all(
        key in labels if value is None else labels.get(key) == value
        for key, value in selector.items()
    )


def covers(query: Labels | None, selector: Labels | None) -> bool:
    """Is every object a `query` matches also one a store holding `selector`'s objects has?"""
    if not selector:
        return True
    query = query or {}
    return all(
        key in query and (value is None or query[key] == value) for key, value in selector.items()
    )


def newer(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Is `candidate` at least as recent as `current` (by resourceVersion, when both are the
    apiserver's usual integers; otherwise the later arrival wins)?"""
    if current is None:
        return True
    have = (current.get("metadata") or {}).get("resourceVersion") or ""
    got = (candidate.get("metadata") or {}).get("resourceVersion") or ""
    if have.isdigit() and got.isdigit():
        return int(got) >= int(have)
    return True


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name"))


class Store:
    """The objects of one kind the apiserver has for one label selector, as last seen.

    Objects are kept as the apiserver sent them and handed out as they are: readers must
    not change them (the planner is pure; kaito.k8s copies before it adds anything).
    """

    def __init__(
        self, api_version: str, kind: str, *, labels: Labels | None = None, index: str = ""
    ) -> None:
        self.api_version = api_version
        self.kind = kind
        self.labels = dict(labels) if labels else None
        self.index = index  # a label whose value is asked for often (the workspace's name)
        self.objects: dict[tuple[str, str], JSON] = {}
        self.by_label: dict[str, set[tuple[str, str]]] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()

    def _stamp(self, obj: JSON) -> JSON:
        # List items come without them; lightkube's models (the uncached reads) have both.
        obj.setdefault("apiVersion", self.api_version)
        obj.setdefault("kind", self.kind)
        # Nobody reads them from here, and they are a third of a typical object's size.
        if isinstance(meta := obj.get("metadata"), dict):
            meta.pop("managedFields", None)
        return obj

    def _unindex(self, key: tuple[str, str]) -> None:
        old = self.objects.pop(key, None)
        if old is not None and self.index:
            value = ((old.get("metadata") or {}).get("labels") or {}).get(self.index)
            if value is not None and (keys := self.by_label.get(value)) is not None:
                keys.discard(key)
                if not keys:
                    del self.by_label[value]

    def _put(self, obj: JSON) -> None:
        key = _key(obj)
        self._unindex(key)
        self.objects[key] = self._stamp(obj)
        if self.index:
            value = ((obj.get("metadata") or {}).get("labels") or {}).get(self.index)
            if value is not None:
                self.by_label.setdefault(value, set()).add(key)

    def replace(self, items: Iterable[JSON], resource_version: str) -> None:
        """A (re)list: exactly these objects, as of `resource_version`."""
        self.objects.clear()
        self.by_label.clear()
        for obj in items:
            self._put(obj)
        self.resource_version = resource_version
        self.synced.set()

    def event(self, op: str, obj: JSON) -> None:
        """One watch event (ADDED, MODIFIED, DELETED; anything else is ignored)."""
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if op in ("ADDED", "MODIFIED"):
            self._put(obj)
        elif op == "DELETED":
            self._unindex(_key(obj))
        if version:
            self.resource_version = str(version)

    def wrote(self, obj: JSON) -> None:
        """The object as a write of ours returned it, unless the watch brought a newer one: the
        next pass need not wait for the watch to see its own write."""
        key = _key(obj)
        if matches((obj.get("metadata") or {}).get("labels") or {}, self.labels) and newer(
            obj, self.objects.get(key)
        ):
            self._put(obj)

    def get(self, namespace: str | None, name: str) -> JSON | None:
        return self.objects.get((namespace or "", name))

    def list(self, namespace: str | None = None, labels: Labels | None = None) -> list[JSON]:
        """Objects in `namespace` (None: all) that match `labels`."""
        keys: Iterable[tuple[str, str]] = self.objects.keys()
        if self.index and labels and labels.get(self.index) is not None:
            keys = self.by_label.get(str(labels[self.index]), set())
        found = []
        for key in keys:
            if namespace is not None and key[0] != namespace:
                continue
            obj = self.objects[key]
            if matches((obj.get("metadata") or {}).get("labels") or {}, labels):
                found.append(obj)
        return found


@functools.cache
def raw(res: Any) -> Any:
    """A lightkube resource class for `res`'s API that decodes to plain JSON dicts (no model
    to build and convert back); not registered, so `res` stays lightkube's model."""
    base = GenericNamespacedResource if _namespaced(res) else GenericGlobalResource

    class Raw(base):  # type: ignore[misc, valid-type]
        _api_info = res._api_info

        @property
        def metadata(self) -> Any:
            # lightkube's watch reads only the resourceVersion; no ObjectMeta model for that.
            return _Version(str((self.get("metadata") or {}).get("resourceVersion") or ""))

    Raw.__name__ = Raw.__qualname__ = f"Raw{res._api_info.resource.kind}"
    return Raw


def _namespaced(res: Any) -> bool:
    return issubclass(res, (NamespacedResource, GenericNamespacedResource))


@dataclass(frozen=True)
class _Version:
    resourceVersion: str  # noqa: N815 - lightkube's attribute name


@dataclass(frozen=True)
class Kind:
    """One cached kind: its lightkube class and the label selector of the objects kept."""

    res: Any
    labels: Labels
    index: str = LABEL_WORKSPACE

    @property
    def name(self) -> str:
        return str(self.res._api_info.resource.kind)


OWNED: Labels = {LABEL_WORKSPACE: None}
# The kinds the controller reads per pass and needs change events for (wakeups). Services,
# ControllerRevisions, ConfigMaps and Nodes are read per pass too, but the operator's role
# has no `watch` on them.
CHILDREN = (
    Kind(NodeClaim, OWNED),
    Kind(StatefulSet, OWNED),
    Kind(Job, OWNED),
    Kind(Pod, OWNED),
)


class Informer:
    """Keeps one Store current: list, then watch from the list's resourceVersion; relist when
    the watch ends in an error (410 Gone after a long disconnect, say)."""

    def __init__(
        self,
        client: AsyncClient,
        kind: Kind,
        *,
        namespace: str | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.client = client
        self.kind = kind
        self.res = raw(kind.res)
        info = kind.res._api_info.resource
        api_version = f"{info.group}/{info.version}" if info.group else info.version
        self.store = Store(api_version, kind.name, labels=kind.labels, index=kind.index)
        self.namespaced = _namespaced(kind.res)
        self.namespace = (namespace or ALL_NS) if self.namespaced else None
        self.listener = listener

    async def list_once(self) -> None:
        kwargs: dict[str, Any] = {"labels": dict(self.kind.labels)}
        if self.namespace is not None:
            kwargs["namespace"] = self.namespace
        listed = self.client.list(self.res, **kwargs)
        items = [dict(item) async for item in listed]
        self.store.replace(items, listed.resourceVersion)

    async def watch_once(self) -> None:
        kwargs: dict[str, Any] = {
            "labels": dict(self.kind.labels),
            "server_timeout": WATCH_TIMEOUT_S,
            "resource_version": self.store.resource_version or None,
        }
        if self.namespace is not None:
            kwargs["namespace"] = self.namespace
        async for op, obj in self.client.watch(self.res, **kwargs):
            body = dict(obj)
            self.store.event(op, body)
            if self.listener is not None and op in ("ADDED", "MODIFIED", "DELETED"):
                self.listener(self.kind.name, op, body)

    async def run(self) -> None:
        delay = RETRY_S
        while True:
            listed = False
            try:
                await self.list_once()
                listed = True
                await self.watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure: relist after a pause
                # A kind that cannot be listed (its CRD not installed yet) is retried ever
                # more slowly; until then reads of it go to the apiserver.
                delay = RETRY_S if listed else min(delay * 2, RETRY_MAX_S)
                log.info("%s cache: %s; listing again in %.0f s", self.kind.name, error, delay)
            await asyncio.sleep(delay)


class Cache:
    """The informers of the cached kinds; `store(res)` for a kind once its first list is in."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str | None = None,
        listener: Listener | None = None,
        kinds: Iterable[Kind] = CHILDREN,
    ) -> None:
        self.informers = {
            kind.name: Informer(client, kind, namespace=namespace, listener=listener)
            for kind in kinds
        }
        self.namespace = namespace
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self.tasks:
            self.tasks = [asyncio.ensure_future(i.run()) for i in self.informers.values()]

    async def synced(self) -> None:
        await asyncio.gather(*(i.store.synced.wait() for i in self.informers.values()))

    def store(self, kind: str, namespace: str | None = None) -> Store | None:
        """The synced store of `kind` that holds objects of `namespace` (None: any)."""
        informer = self.informers.get(kind)
        if informer is None or not informer.store.synced.is_set():
            return None
        scoped = informer.namespace not in (None, ALL_NS)
        if scoped and namespace != informer.namespace:
            return None
        return informer.store

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
