"""kopf registration: a daemon per Workspace, child watchers that wake it, deletion, webhook."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from typing import Any, cast

import kopf

from kaito.k8s.cache import Cache
from kaito.k8s.client import Kube
from kaito.manifests.keys import FINALIZER
from kaito.operator.controller import Controller
from kaito.operator.inferenceset import register_reconcile as register_inferenceset_reconcile
from kaito.operator.inferenceset import register_webhook as register_inferenceset_webhook
from kaito.operator.settings import Settings
from kaito.operator.webhook import (
    WEBHOOK_HANDLER_ID,
    WEBHOOK_NAME,
    CaPublisher,
    admission_errors,
    webhook_server,
)

WORKSPACES = ("kaito.sh", "v1beta1", "workspaces")


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base (the essence it compares on every Workspace event, for `on.delete`),
    built without deep-copying the status and metadata it then throws away."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        # Measured on the operator bench: kopf's own build deep-copied every Workspace's
        # status and managedFields per event, a tenth of the operator's CPU.
        if extra_fields:
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata") or {}
        slim = {key: value for key, value in body.items() if key not in ("status", "metadata")}
        slim["metadata"] = {key: meta[key] for key in ("labels", "annotations") if key in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, slim)))


def build_registry(
    settings: Settings, *, reconcile: bool = True, admission: bool = True
) -> kopf.OperatorRegistry:
    """The operator's handlers in a fresh registry (no module-level global state).

    With leader election the process runs two kopf operators: one for admission only (every
    replica serves the webhook) and, while leading, one for reconciliation only.
    """
    registry = kopf.OperatorRegistry()
    serve_webhook = admission and settings.webhook_enabled

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        op_settings = _settings
        # Upstream's finalizer name, so clients and cleanup scripts recognise it.
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kaito.sh")
        settings.persistence.diffbase_storage = LeanDiffBaseStorage(
            prefix="kaito.sh", key="last-handled-configuration"
        )
        settings.posting.enabled = False
        settings.watching.server_timeout = 120
        settings.watching.client_timeout = 150
        kube = Kube.from_env()
        if serve_webhook:
            server: Any = webhook_server(op_settings)
            if op_settings.webhook_configuration:
                server = CaPublisher(server, kube, op_settings.webhook_configuration)
            settings.admission.server = server
            if op_settings.webhook_managed:
                settings.admission.managed = WEBHOOK_NAME
        controller = Controller(kube, op_settings)
        memo.controller = controller
        if reconcile:
            # The children's reads and the wakeups they cause come from one watch per kind.
            kube.cache = Cache(
                kube.client,
                namespace=op_settings.watch_namespace or None,
                listener=controller.child_event,
            )
            kube.cache.start()

    _settings = settings

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # kopf's built-in logins need no extra client library: KUBECONFIG, else in-cluster.
        return kopf.login_with_kubeconfig(**kwargs) or kopf.login_with_service_account(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def close(memo: kopf.Memo, **_: Any) -> None:
        controller: Controller | None = getattr(memo, "controller", None)
        if controller is not None:
            # One line a benchmark can read (bench/operator): passes and writes.
            logging.getLogger("kaito.operator").info(
                "stats: %s", json.dumps(dataclasses.asdict(controller.stats))
            )
            if controller.kube.cache is not None:
                await controller.kube.cache.close()
            await controller.kube.close()

    if serve_webhook:
        _register_webhook(registry)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if reconcile:
        _register_reconcile(registry)
    return registry


def _register_reconcile(registry: kopf.OperatorRegistry) -> None:
    @kopf.daemon(
        *WORKSPACES,
        registry=registry,
        cancellation_backoff=3.0,
        cancellation_timeout=10.0,
        backoff=5.0,
    )
    async def workspace_daemon(
        body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any
    ) -> None:
        # kopf keeps `body` current as watch events arrive, so each pass sees the latest spec.
        controller: Controller = memo.controller
        await controller.run_loop(body, stopped)

    @kopf.on.event(*WORKSPACES, registry=registry)
    # Async, like every per-event handler here: kopf runs a sync one in its thread pool, a
    # hand-off per watch event that costs more than the handler itself.
    async def workspace_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        controller: Controller | None = getattr(memo, "controller", None)
        if controller is not None:
            controller.workspace_changed(body)

    @kopf.on.delete(*WORKSPACES, registry=registry)
    async def workspace_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """Delete the NodeClaims; ownerReferences take care of everything else."""
        controller: Controller = memo.controller
        await controller.reconcile(body)

    # The children (NodeClaims, StatefulSets, Jobs, Pods) wake their Workspace from the
    # cache's watches (kaito.k8s.cache, started in `configure`), not from kopf handlers.
    register_inferenceset_reconcile(registry)


def _register_webhook(registry: kopf.OperatorRegistry) -> None:
    register_inferenceset_webhook(registry)

    # kopf refuses to start with admission handlers but no server, so only when enabled.
    # An explicit id: the generated one is not a valid webhook name. Persistent: kopf keeps
    # it in a managed configuration when the operator stops (failurePolicy Fail), so a
    # restart or rollout never lets a Workspace in unchecked.
    @kopf.on.validate(
        "kaito.sh",
        "workspaces",
        id=WEBHOOK_HANDLER_ID,
        registry=registry,
        operations=["CREATE", "UPDATE"],
        persistent=True,
    )
    async def validate(body: kopf.Body, memo: Any, warnings: list[str], **kwargs: Any) -> None:
        controller: Controller = memo.controller
        old = kwargs.get("old")
        errors, notes = await admission_errors(
            controller.kube, controller.settings, body, dict(old) if old else None
        )
        warnings.extend(notes)
        if errors:
            raise kopf.AdmissionError("; ".join(errors), code=422)
