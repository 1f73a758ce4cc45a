"""kopf wiring for InferenceSets: a daemon per set woken by its Workspaces, and admission."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from pydantic import ValidationError

from kaito.api.inferenceset import LABEL_INFERENCESET, parse_inferenceset
from kaito.k8s.client import Kube, rfc3339
from kaito.k8s.inferenceset import execute_set, observe_set
from kaito.k8s.ownership import ChildWriteError, NameConflictError
from kaito.operator.controller import sleep_until
from kaito.operator.settings import Settings
from kaito.operator.webhook import admission_errors
from kaito.reconcile.inferenceset import proto_workspace

INFERENCESETS = ("kaito.sh", "v1beta1", "inferencesets")
WORKSPACES = ("kaito.sh", "v1beta1", "workspaces")
HANDLER_ID = "inferenceset"
# Unexpected failures (apiserver hiccups) retry after this; the daemon never gives up.
RETRY_S = 10.0
log = logging.getLogger("kaito.operator")


class SetController:
    """One pass per InferenceSet: observe its Workspaces, plan (pure), write."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.options = settings.cluster_options()
        self.wakeups: dict[tuple[str, str], asyncio.Event] = {}

    def wake(self, namespace: str | None, name: str | None) -> None:
        if namespace and name and (event := self.wakeups.get((namespace, name))) is not None:
            event.set()

    async def reconcile(self, body: kopf.Body) -> float | None:
        from kaito.reconcile.inferenceset import plan_set

        workspaces, service = await observe_set(self.kube, body)
        result = plan_set(body, workspaces, service, self.options, now=rfc3339())
        await execute_set(self.kube, body, result)
        return result.requeue_after

    async def run_loop(self, body: kopf.Body, stopped: Any, resync_s: float) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        wake = self.wakeups.setdefault(key, asyncio.Event())
        try:
            while not stopped:
                wake.clear()
                try:
                    delay = await self.reconcile(body)
                except (ChildWriteError, NameConflictError, kopf.TemporaryError) as error:
                    log.warning("inferenceset %s/%s: %s", *key, error)
                    delay = RETRY_S
                except Exception:
                    log.exception("inferenceset %s/%s: reconcile failed", *key)
                    delay = RETRY_S
                await sleep_until(wake, stopped, delay or resync_s)
        finally:
            self.wakeups.pop(key, None)


def _controller(memo: kopf.Memo) -> SetController | None:
    workspace_controller = getattr(memo, "controller", None)
    if workspace_controller is None:
        return None
    found: SetController | None = getattr(memo, "inferencesets", None)
    if found is None:
        found = SetController(workspace_controller.kube, workspace_controller.settings)
        memo.inferencesets = found
    return found


def register_reconcile(registry: kopf.OperatorRegistry) -> None:
    @kopf.daemon(
        *INFERENCESETS,
        registry=registry,
        cancellation_backoff=3.0,
        cancellation_timeout=10.0,
        backoff=5.0,
    )
    async def inferenceset_daemon(
        body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any
    ) -> None:
        controller = _controller(memo)
        if controller is not None:
            resync = float(memo.controller.settings.resync_seconds)
            await controller.run_loop(body, stopped, resync)

    @kopf.on.event(*INFERENCESETS, registry=registry)
    async def inferenceset_changed(
        name: str | None, namespace: str | None, memo: kopf.Memo, **_: Any
    ) -> None:
        controller = _controller(memo)
        if controller is not None:
            controller.wake(namespace, name)

    @kopf.on.event(*WORKSPACES, labels={LABEL_INFERENCESET: kopf.PRESENT}, registry=registry)
    async def member_changed(
        body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
    ) -> None:
        controller = _controller(memo)
        labels = (body.get("metadata") or {}).get("labels") or {}
        if controller is not None:
            controller.wake(namespace, labels.get(LABEL_INFERENCESET))


def register_webhook(registry: kopf.OperatorRegistry) -> None:
    @kopf.on.validate(
        "kaito.sh",
        "inferencesets",
        id=HANDLER_ID,
        registry=registry,
        operations=["CREATE", "UPDATE"],
        persistent=True,
    )
    async def validate_inferenceset(body: kopf.Body, memo: Any, **_: Any) -> None:
        """The template is judged as the Workspace it becomes, by the Workspace's rules."""
        try:
            iset = parse_inferenceset(dict(body))
        except ValidationError as exc:
            raise kopf.AdmissionError(f"InferenceSet: {exc.errors()[0]['msg']}", code=422) from exc
        errors, _warnings = await admission_errors(
            memo.controller.kube, memo.controller.settings, proto_workspace(iset), None
        )
        if errors:
            raise kopf.AdmissionError(
                "spec.template (checked as a Workspace): " + "; ".join(errors), code=422
            )
