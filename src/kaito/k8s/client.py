"""Async Kubernetes access for the controller: observe, apply (SSA), delete, status, events."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.resources.admissionregistration_v1 import ValidatingWebhookConfiguration
from lightkube.resources.apps_v1 import ControllerRevision, StatefulSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Event, Node, PersistentVolumeClaim, Pod, Service
from lightkube.types import CascadeType, PatchType

from kaito.api.workspace import Workspace as WorkspaceModel
from kaito.k8s.cache import Cache, Store, covers, raw
from kaito.k8s.ownership import (
    ChildWriteError,
    NameConflictError,
    Owner,
    controller_uid,
    owned_for_delete,
    owns,
)
from kaito.k8s.resources import NodeClaim, Workspace, resource_for
from kaito.k8s.transport import AiohttpTransport
from kaito.manifests.inference import default_config_map_name, headless_service_name
from kaito.manifests.keys import FIELD_MANAGER, LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE
from kaito.manifests.options import ClusterOptions
from kaito.manifests.preflight import preflight_job_name
from kaito.manifests.revision import LABEL_REVISION_OWNER
from kaito.manifests.tuning import results_claim_name
from kaito.reconcile.observed import wanted_config_maps
from kaito.reconcile.types import Event as PlannedEvent
from kaito.reconcile.types import ObjectRef, Observed

JSON = dict[str, Any]
T = TypeVar("T")
# Requests one client has in flight (watches aside); see Kube.slots.
MAX_REQUESTS_IN_FLIGHT = 16
ALL_NAMESPACES = ALL_NS  # `namespace=` for a list across every namespace
CASCADE = {
    "Foreground": CascadeType.FOREGROUND,
    "Background": CascadeType.BACKGROUND,
    "Orphan": CascadeType.ORPHAN,
}


def to_json(obj: Any) -> JSON:
    """A lightkube object (model or generic) as plain JSON."""
    if isinstance(obj, dict):
        return obj
    result: JSON = obj.to_dict()
    return result


def _stamped(obj: Mapping[str, Any], res: Any) -> JSON:
    """A raw read as plain JSON with its apiVersion and kind (list items come without)."""
    found = dict(obj)
    info = res._api_info.resource
    found.setdefault("apiVersion", f"{info.group}/{info.version}" if info.group else info.version)
    found.setdefault("kind", info.kind)
    return found


def is_not_found(error: ApiError) -> bool:
    return getattr(error.status, "code", None) == 404


def is_conflict(error: ApiError) -> bool:
    return getattr(error.status, "code", None) == 409


def api_message(error: ApiError) -> str:
    """The apiserver's own message for a failed call (what it says is wrong)."""
    return str(getattr(error.status, "message", None) or error)


def status_code(error: ApiError) -> int:
    return int(getattr(error.status, "code", 0) or 0)


def rfc3339(moment: datetime.datetime | None = None) -> str:
    moment = moment or datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """One lightkube AsyncClient, one field manager, and the calls the controller makes."""

    def __init__(self, client: AsyncClient, *, field_manager: str = FIELD_MANAGER) -> None:
        self.client = client
        self.field_manager = field_manager
        # Ten reconciles at once each fan out about ten reads: unbounded, that kept ~100
        # connections open (httpx's pool keeps 20 alive, so the rest were a TLS handshake on
        # both ends per request) and the apiserver busy with all of them at once.
        self.slots = asyncio.Semaphore(MAX_REQUESTS_IN_FLIGHT)
        # Watch-fed reads of the children (the operator starts one; see kaito.k8s.cache).
        self.cache: Cache | None = None

    async def _bounded(self, request: Awaitable[T]) -> T:
        """Await one lightkube request (not sent before this) within `slots`."""
        async with self.slots:
            return await request

    @classmethod
    def from_env(cls, *, field_manager: str = FIELD_MANAGER) -> Kube:
        """KUBECONFIG (or ~/.kube/config), else the in-cluster service account."""
        config = KubeConfig.from_env()
        single = config.get()
        transport = None
        if single is not None and single.user is not None:
            verify = verify_cluster(single.cluster, single.user, single.abs_file)
            transport = AiohttpTransport(verify)
        client = AsyncClient(config, field_manager=field_manager, transport=transport)
        return cls(client, field_manager=field_manager)

    async def close(self) -> None:
        await self.client.close()

    # --- reads ---------------------------------------------------------------------------

    async def get(self, res: Any, name: str, namespace: str | None = None) -> JSON | None:
        """The object as the apiserver has it now (never from the cache), None if absent."""
        # Decoded to plain JSON: a lightkube model costs a decode and a to_dict per read.
        plain = raw(res)
        try:
            if namespace is None:
                found = await self._bounded(self.client.get(plain, name))
            else:
                found = await self._bounded(self.client.get(plain, name, namespace=namespace))
        except ApiError as error:
            if is_not_found(error):
                return None
            raise
        return _stamped(found, res)

    async def read(self, res: Any, name: str, namespace: str | None = None) -> JSON | None:
        """For the planner: the cached object if the cache has it, else `get` (a labelled
        cache's miss says nothing about objects without the label)."""
        store = self._store(res._api_info.resource.kind, namespace)
        if store is not None and (found := store.get(namespace, name)) is not None:
            return found
        return await self.get(res, name, namespace)

    async def read_list(
        self,
        res: Any,
        *,
        namespace: str | None = None,
        labels: Mapping[str, str | None] | None = None,
    ) -> list[JSON]:
        """For the planner: `list_json`, from the cache when it holds every object asked for."""
        store = self._store(res._api_info.resource.kind, namespace)
        if store is not None and covers(labels, store.labels):
            return store.list(namespace, labels)
        return await self.list_json(res, namespace=namespace, labels=labels)

    def wrote(self, obj: JSON) -> None:
        """Our write's result into the cache (the next pass reads it without the watch)."""
        meta = obj.get("metadata") or {}
        store = self._store(str(obj.get("kind")), meta.get("namespace"))
        if store is not None:
            store.wrote(obj)

    def _store(self, kind: str, namespace: str | None) -> Store | None:
        """The cache's store for `kind` in `namespace`, or None when nothing caches it."""
        return self.cache.store(kind, namespace) if self.cache is not None else None

    async def list_json(
        self,
        res: Any,
        *,
        namespace: str | None = None,
        labels: Mapping[str, str | None] | None = None,
    ) -> list[JSON]:
        """Objects of one kind; a label mapped to None only has to exist."""
        selector: dict[str, Any] | None = dict(labels) if labels else None
        plain = raw(res)
        async with self.slots:
            if namespace is None:
                items = self.client.list(plain, labels=selector)
            else:
                items = self.client.list(plain, namespace=namespace, labels=selector)
            return [_stamped(item, res) async for item in items]

    async def config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        found = await self.get(ConfigMap, name, namespace)
        return None if found is None else dict(found.get("data") or {})

    async def count_nodeclaims(self) -> int:
        """NodeClaims of all Workspaces that are not being deleted."""
        claims = await self.list_json(NodeClaim, labels={LABEL_WORKSPACE: None})
        return sum(1 for c in claims if not (c.get("metadata") or {}).get("deletionTimestamp"))

    async def nodeclaims_of(self, namespace: str, name: str) -> list[JSON]:
        labels = {LABEL_WORKSPACE: name, LABEL_WORKSPACE_NAMESPACE: namespace}
        return await self.read_list(NodeClaim, labels=labels)

    async def observe(
        self, workspace: WorkspaceModel, options: ClusterOptions, *, check_names: bool = True
    ) -> Observed:
        """Everything the planner reads for one workspace, fetched concurrently; an object the
        name check and the planner both read is fetched once."""
        ns, name = workspace.namespace, workspace.name
        selector = workspace.resource.label_selector.as_map() if workspace.resource else {}
        preferred = list(workspace.resource.preferred_nodes or []) if workspace.resource else []
        own = {LABEL_WORKSPACE: name}
        wanted = wanted_config_maps(workspace, options)
        fetched: dict[tuple[str, str, str], asyncio.Task[JSON | None]] = {}

        def get_once(res: Any, child: str, namespace: str) -> asyncio.Task[JSON | None]:
            key = (res._api_info.resource.kind, namespace, child)
            if key not in fetched:
                fetched[key] = asyncio.ensure_future(self.read(res, child, namespace))
            return fetched[key]

        async def none() -> None:
            return None

        async def nodes() -> list[JSON]:
            # The selector keeps the list small; preferred nodes are fetched by name.
            found = await self.list_json(Node, labels=selector or None)
            names = {n["metadata"]["name"] for n in found}
            for extra in preferred:
                if extra not in names and (node := await self.get(Node, extra)) is not None:
                    found.append(node)
            return found

        async def claims() -> list[JSON]:
            return await self.nodeclaims_of(ns, name) if options.uses_nodeclaims else []

        async def config_map_data(cm_ns: str, cm_name: str) -> dict[str, str] | None:
            found = await get_once(ConfigMap, cm_name, cm_ns)
            return None if found is None else dict(found.get("data") or {})

        # Names the workspace would create: taken by anything it does not control stops the
        # pass (its reads are discarded), before any GPU node is requested (not while it is
        # deleted: nothing is created).
        lists = asyncio.gather(
            claims(),
            nodes(),
            self.list_json(Service, namespace=ns, labels=own),
            self.read_list(Pod, namespace=ns, labels=own),
            self.list_json(ControllerRevision, namespace=ns, labels={LABEL_REVISION_OWNER: name}),
        )

        async def named(res: Any, child: str, namespace: str) -> JSON | None:
            if res is Service:
                # The workspace's own Services come with the list: no GET for those.
                for service in (await lists)[2]:
                    if service["metadata"]["name"] == child:
                        return service
            return await get_once(res, child, namespace)

        names = self.check_names(workspace, named) if check_names else none()
        singles = asyncio.gather(
            get_once(StatefulSet, name, ns) if workspace.inference is not None else none(),
            get_once(Job, name, ns) if workspace.tuning is not None else none(),
            (
                get_once(PersistentVolumeClaim, results_claim_name(name), ns)
                if workspace.tuning is not None
                else none()
            ),
            (
                get_once(Job, preflight_job_name(name), ns)
                if workspace.tuning is not None
                else none()
            ),
        )
        maps = asyncio.gather(*(config_map_data(cm_ns, cm_name) for cm_ns, cm_name in wanted))
        try:
            (
                _,
                (found_claims, found_nodes, services, pods, revisions),
                (sts, job, results_claim, preflight_job),
                datas,
            ) = await asyncio.gather(names, lists, singles, maps)
        except BaseException:
            for group in (lists, singles, maps):
                group.cancel()
            raise
        config_maps = {
            key: data for key, data in zip(wanted, datas, strict=True) if data is not None
        }
        return Observed(
            nodeclaims=tuple(found_claims),
            nodes=tuple(found_nodes),
            statefulset=sts,
            job=job,
            results_claim=results_claim,
            preflight_job=preflight_job,
            services=tuple(services),
            pods=tuple(pods),
            config_maps=config_maps,
            config_maps_seen=frozenset(wanted),
            revisions=tuple(revisions),
        )

    async def check_names(
        self,
        workspace: WorkspaceModel,
        get: Callable[[Any, str, str], Awaitable[JSON | None]] | None = None,
    ) -> None:
        """Raise NameConflictError when a fixed-name child of the workspace exists and its
        controller is not this workspace (the apply and delete guards catch the rest)."""
        get = get or self.get
        ns, name = workspace.namespace, workspace.name
        wanted: list[tuple[Any, str]] = []
        if workspace.inference is not None:
            wanted += [(StatefulSet, name), (Service, name), (Service, headless_service_name(name))]
            if not workspace.inference.config and workspace.inference.template is None:
                wanted.append((ConfigMap, default_config_map_name(name)))
        if workspace.tuning is not None:
            wanted += [(Job, name), (Job, preflight_job_name(name))]
            if workspace.tuning.output.volume_source is None:
                wanted.append((PersistentVolumeClaim, results_claim_name(name)))
        found = await asyncio.gather(*(get(res, child, ns) for res, child in wanted))
        owner = Owner(workspace.metadata.uid or "", name, ns)
        for (res, _), existing in zip(wanted, found, strict=True):
            if existing is not None and controller_uid(existing) != owner.uid:
                # A copy: the same fetched object may also go to the planner.
                existing = {**existing, "kind": existing.get("kind") or res._api_info.resource.kind}
                raise NameConflictError(existing, owner)

    async def watch_json(self, res: Any) -> AsyncIterator[tuple[str, JSON]]:
        """(ADDED | MODIFIED | DELETED, object) for every change of a cluster-scoped kind."""
        async for op, obj in self.client.watch(res):
            yield op, to_json(obj)

    # --- writes --------------------------------------------------------------------------

    async def create(self, obj: Mapping[str, Any]) -> JSON:
        """Create only: unlike `apply`, an object that exists already is a conflict (409)."""
        res = resource_for(obj["apiVersion"], obj["kind"])
        return to_json(await self._bounded(self.client.create(res.from_dict(dict(obj)))))

    async def merge_status(
        self, res: Any, name: str, status: Mapping[str, Any], namespace: str | None = None
    ) -> JSON:
        """Merge-patch the status subresource (what a kubelet or a provisioner reports)."""
        body = {"status": dict(status)}
        if namespace is None:
            patched = await self._bounded(
                self.client.patch(res.Status, name, body, patch_type=PatchType.MERGE)
            )
        else:
            patched = await self._bounded(
                self.client.patch(
                    res.Status, name, body, namespace=namespace, patch_type=PatchType.MERGE
                )
            )
        return to_json(patched)

    async def server_side_apply(self, obj: Mapping[str, Any]) -> JSON:
        """Forced server-side apply with no ownership check: for objects that are not a
        Workspace's (the node simulator's Nodes). The controller uses `apply`."""
        res = resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        kwargs: dict[str, Any] = {
            "patch_type": PatchType.APPLY,
            "field_manager": self.field_manager,
            "force": True,
        }
        if meta.get("namespace"):
            kwargs["namespace"] = meta["namespace"]
        written = await self._bounded(
            self.client.patch(raw(res), meta["name"], dict(obj), **kwargs)
        )
        return _stamped(written, res)

    async def remove(self, ref: ObjectRef) -> None:
        """Delete with no ownership check (the node simulator's own Nodes and volumes); gone
        already is fine. The controller uses `delete`."""
        res = resource_for(ref.api_version, ref.kind)
        try:
            if ref.namespace:
                await self._bounded(
                    self.client.delete(
                        res,
                        ref.name,
                        namespace=ref.namespace,
                        cascade=CASCADE[ref.propagation],
                    )
                )
            else:
                await self._bounded(
                    self.client.delete(res, ref.name, cascade=CASCADE[ref.propagation])
                )
        except ApiError as error:
            if not is_not_found(error):
                raise

    async def apply(self, obj: Mapping[str, Any], owner: Owner) -> JSON:
        """Server-side apply under the controller's field manager, only over an object that
        `owner` owns (force: then every field is kaito's). A ConfigMap is created once and
        never changed afterwards, so the operator holds no patch on ConfigMaps.

        Raises NameConflictError for an object owned by someone else, ChildWriteError when the
        apiserver refuses the write.
        """
        res = resource_for(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        namespace = meta.get("namespace") or None
        try:
            existing = await self.get(res, meta["name"], namespace)
            if existing is not None:
                existing.setdefault("kind", obj["kind"])
                if not owns(existing, obj, owner):
                    raise NameConflictError(existing, owner)
                if obj["kind"] == "ConfigMap":
                    return existing
            if obj["kind"] == "ConfigMap":
                return to_json(await self._bounded(self.client.create(res.from_dict(dict(obj)))))
            written = await self.server_side_apply(obj)
            self.wrote(written)
            return written
        except ApiError as error:
            raise ChildWriteError("apply", obj, status_code(error), api_message(error)) from error

    async def delete(self, ref: ObjectRef, owner: Owner) -> None:
        """Delete an object `owner` owns; gone already is fine, someone else's is a conflict."""
        res = resource_for(ref.api_version, ref.kind)
        target = {
            "kind": ref.kind,
            "metadata": {"name": ref.name, "namespace": ref.namespace},
        }
        try:
            existing = await self.get(res, ref.name, ref.namespace)
            if existing is None:
                return
            existing.setdefault("kind", ref.kind)
            if not owned_for_delete(existing, owner):
                raise NameConflictError(existing, owner)
            await self.remove(ref)
        except ApiError as error:
            code, message = status_code(error), api_message(error)
            raise ChildWriteError("delete", target, code, message) from error

    async def write_status(
        self, namespace: str, name: str, old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> str | None:
        """Merge-patch the status subresource; keys the planner dropped are nulled. The
        Workspace's resourceVersion after the write."""
        patch = {**{key: None for key in old if key not in new}, **new}
        written = await self._bounded(
            self.client.patch(
                Workspace.Status,
                name,
                {"status": patch},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        )
        version = (to_json(written).get("metadata") or {}).get("resourceVersion")
        return str(version) if version else None

    async def annotate(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        await self._bounded(
            self.client.patch(
                Workspace,
                name,
                {"metadata": {"annotations": dict(annotations)}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        )

    async def event(self, body: Mapping[str, Any], event: PlannedEvent) -> None:
        """A core/v1 Event about the workspace; losing one is not worth failing a reconcile.

        The same (type, reason, message) about the same Workspace is one Event object whose
        count and lastTimestamp grow, as client-go's recorder does, so a failure that recurs
        every backoff period does not leave one object per attempt.
        """
        meta = body.get("metadata") or {}
        now = rfc3339()
        namespace = str(meta.get("namespace"))
        key = "/".join((str(meta.get("uid")), event.type, event.reason, event.message))
        name = f"{meta.get('name')}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        record = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": body.get("apiVersion"),
                "kind": "Workspace",
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message,
            "source": {"component": "kaito-workspace-controller"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            try:
                await self._bounded(self.client.create(cast(Event, Event.from_dict(record))))
            except ApiError as error:
                if not is_conflict(error):
                    raise
                seen = await self.get(Event, name, namespace)
                count = int((seen or {}).get("count") or 1) + 1
                await self._bounded(
                    self.client.patch(
                        Event,
                        name,
                        {"count": count, "lastTimestamp": now},
                        namespace=namespace,
                        patch_type=PatchType.MERGE,
                    )
                )
        except ApiError:
            return

    async def patch_webhook_ca(self, name: str, webhooks: list[str], ca_bundle: str) -> None:
        """Set the caBundle of the named webhooks in the ValidatingWebhookConfiguration `name`
        (one the chart installed), so the apiserver trusts this process's certificate."""
        patch = {
            "webhooks": [
                {"name": hook, "clientConfig": {"caBundle": ca_bundle}} for hook in webhooks
            ]
        }
        await self._bounded(
            self.client.patch(
                ValidatingWebhookConfiguration, name, patch, patch_type=PatchType.STRATEGIC
            )
        )
