"""One level-based reconcile pass: observe, plan (pure), apply with SSA, write status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError

from kaito.api.workspace import Workspace
from kaito.k8s.client import Kube, rfc3339
from kaito.manifests.keys import LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE
from kaito.operator.errors import classify
from kaito.operator.settings import Settings
from kaito.reconcile.planner import parse, plan
from kaito.reconcile.types import Event, Observed, Plan

Key = tuple[str, str]
log = logging.getLogger("kaito.operator")


@dataclass
class Stats:
    """Counters for benchmarks and logs (monotonic, process-wide)."""

    reconciles: int = 0
    writes: int = 0
    errors: int = 0
    reconcile_seconds: float = 0.0


class Controller:
    """Holds the API client and wakes per-workspace loops when their children change."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self.options = settings.cluster_options()
        self.semaphore = asyncio.Semaphore(max(1, settings.max_concurrent_reconciles))
        self.wakeups: dict[Key, asyncio.Event] = {}
        self.stats = Stats()

    def wakeup(self, namespace: str, name: str) -> asyncio.Event:
        return self.wakeups.setdefault((namespace, name), asyncio.Event())

    def forget(self, namespace: str, name: str) -> None:
        self.wakeups.pop((namespace, name), None)

    def wake(self, namespace: str | None, name: str | None) -> None:
        if namespace and name and (event := self.wakeups.get((namespace, name))) is not None:
            event.set()

    def wake_for_child(self, body: Mapping[str, Any], namespace: str | None) -> None:
        """A child changed: wake the workspace named by its labels."""
        labels = (body.get("metadata") or {}).get("labels") or {}
        self.wake(labels.get(LABEL_WORKSPACE_NAMESPACE) or namespace, labels.get(LABEL_WORKSPACE))

    async def reconcile(self, body: Mapping[str, Any]) -> Plan:
        """Observe, plan, execute. Raises what `errors.classify` maps to framework behaviour."""
        started = time.perf_counter()
        async with self.semaphore:
            workspace = parse(body)  # once per pass; a SpecError becomes a condition
            observed = (
                await self.kube.observe(workspace, self.options)
                if isinstance(workspace, Workspace)
                else Observed()
            )
            result = plan(body, observed, self.options, now=rfc3339(), workspace=workspace)
            await self.execute(body, result)
        self.stats.reconciles += 1
        self.stats.reconcile_seconds += time.perf_counter() - started
        return result

    async def execute(self, body: Mapping[str, Any], result: Plan) -> None:
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        if result.annotations:
            await self.kube.annotate(namespace, name, result.annotations)
            self.stats.writes += 1
        applied: set[tuple[str, str]] = set()
        for obj in result.apply:
            try:
                await self.kube.apply(obj)
            except ApiError as error:
                if obj["kind"] == "NodeClaim":
                    # One failed claim must not stop the others (upstream §8.1).
                    message = f"Failed to create NodeClaim {obj['metadata']['name']}: {error}"
                    await self.kube.event(
                        body, Event("Warning", "NodeClaimCreationFailed", message)
                    )
                    self.stats.errors += 1
                    continue
                raise
            applied.add((obj["kind"], obj["metadata"]["name"]))
            self.stats.writes += 1
        for ref in result.delete:
            await self.kube.delete(ref)
            self.stats.writes += 1
        if result.status is not None:
            await self.kube.write_status(namespace, name, body.get("status") or {}, result.status)
            self.stats.writes += 1
        for event in result.events:
            if event.subject is not None and event.subject not in applied:
                continue  # announces an object whose apply failed
            await self.kube.event(body, event)

    async def run_loop(self, body: Mapping[str, Any], stopped: Any) -> None:
        """Reconcile a workspace until kopf stops its daemon; sleep on events, not polls."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        wake = self.wakeup(namespace, name)
        try:
            while not stopped:
                wake.clear()
                delay: float | None
                try:
                    result = await self.reconcile(body)
                    delay = result.requeue_after
                except Exception as error:  # classified below; unexpected ones re-raise
                    outcome = classify(error)
                    if outcome.tier == "unexpected":
                        self.stats.errors += 1
                        raise
                    log.info("%s/%s: %s (%s)", namespace, name, outcome.message, outcome.tier)
                    delay = outcome.delay if outcome.tier == "temporary" else None
                await sleep_until(wake, stopped, delay or self.settings.resync_seconds)
        finally:
            self.forget(namespace, name)


async def sleep_until(wake: asyncio.Event, stopped: Any, seconds: float) -> None:
    """Return when woken, when kopf stops the daemon, or after `seconds`."""

    async def until_stopped() -> None:
        await stopped.wait()

    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(until_stopped())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
