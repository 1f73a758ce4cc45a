"""One level-based reconcile pass: observe, plan (pure), apply with SSA, write status."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError

from kaito.api.workspace import Workspace
from kaito.k8s.client import Kube, rfc3339
from kaito.k8s.ownership import ChildWriteError, Owner
from kaito.manifests.keys import LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE
from kaito.operator.errors import classify
from kaito.operator.failures import (
    QUIET_RETRIES,
    QUIET_RETRY_S,
    Failure,
    NodeClaimLimitError,
    backoff_seconds,
    failed_status,
    failure_of,
    recovered_status,
)
from kaito.operator.settings import Settings
from kaito.reconcile.planner import parse, plan
from kaito.reconcile.types import Event, Observed, Plan

Key = tuple[str, str]
CLAIM_COUNT_TTL_S = 5.0
# kopf's batch window for the child watches it used to run (kaito.k8s.cache has none).
WAKE_BATCH_S = 0.1
log = logging.getLogger("kaito.operator")


@dataclass
class Stats:
    """Counters for benchmarks and logs (monotonic, process-wide)."""

    reconciles: int = 0
    writes: int = 0
    errors: int = 0
    reconcile_seconds: float = 0.0
    # What ended a daemon's sleep: the kind whose event woke it, or "timer" (requeue).
    woken: dict[str, int] = field(default_factory=dict)


class Controller:
    """Holds the API client and wakes per-workspace loops when their children change."""

    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self.options = settings.cluster_options()
        self.semaphore = asyncio.Semaphore(max(1, settings.max_concurrent_reconciles))
        self.wakeups: dict[Key, asyncio.Event] = {}
        self.stats = Stats()
        self.claims_lock = asyncio.Lock()
        # The NodeClaim total as last listed plus the claims created since (see claim_total).
        self.claims_counted: tuple[int, float] | None = None
        # Per workspace: (resourceVersion, what the pass read) of its last status write, so
        # the watch event of that write does not start a pass that would change nothing.
        self.own_writes: dict[Key, tuple[str, Any]] = {}

    def wakeup(self, namespace: str, name: str) -> asyncio.Event:
        return self.wakeups.setdefault((namespace, name), asyncio.Event())

    def forget(self, namespace: str, name: str) -> None:
        self.wakeups.pop((namespace, name), None)
        self.own_writes.pop((namespace, name), None)

    def workspace_changed(self, body: Mapping[str, Any]) -> None:
        """A Workspace watch event: wake its loop unless the event is only this controller's
        own status write over the very body the pass read (nothing new to plan from)."""
        meta = body.get("metadata") or {}
        key = workspace_key(body)
        own = self.own_writes.pop(key, None)
        if own is not None and own == (meta.get("resourceVersion"), _inputs(body)):
            return
        self.wake(*key, cause="Workspace")

    def wake(self, namespace: str | None, name: str | None, cause: str = "") -> None:
        if namespace and name and (event := self.wakeups.get((namespace, name))) is not None:
            if cause and not event.is_set():
                self.stats.woken[cause] = self.stats.woken.get(cause, 0) + 1
            event.set()

    def child_event(self, kind: str, op: str, body: Mapping[str, Any]) -> None:
        """A cached child changed (kaito.k8s.cache): wake its workspace."""
        self.wake_for_child(body, (body.get("metadata") or {}).get("namespace"), kind)

    def wake_for_child(
        self, body: Mapping[str, Any], namespace: str | None, kind: str = ""
    ) -> None:
        """A child changed: wake the workspace named by its labels."""
        labels = (body.get("metadata") or {}).get("labels") or {}
        self.wake(
            labels.get(LABEL_WORKSPACE_NAMESPACE) or namespace, labels.get(LABEL_WORKSPACE), kind
        )

    async def reconcile(self, body: Mapping[str, Any]) -> Plan:
        """Observe, plan, execute. Raises what `errors.classify` maps to framework behaviour.

        The workspace's wakeup is cleared once the pass may start: what happened while it
        waited for a slot is read by this pass and needs no pass of its own (a work queue's
        deduplication).
        """
        started = time.perf_counter()
        async with self.semaphore:
            if (wake := self.wakeups.get(workspace_key(body))) is not None:
                wake.clear()
            inputs = _inputs(body)
            workspace = parse(body)  # once per pass; a SpecError becomes a condition
            observed = (
                await self.kube.observe(workspace, self.options, check_names=not _deleting(body))
                if isinstance(workspace, Workspace)
                else Observed()
            )
            result = plan(body, observed, self.options, now=rfc3339(), workspace=workspace)
            version = await self.execute(body, result)
            if version is not None:
                self.own_writes[workspace_key(body)] = (version, inputs)
        self.stats.reconciles += 1
        self.stats.reconcile_seconds += time.perf_counter() - started
        return result

    async def execute(self, body: Mapping[str, Any], result: Plan) -> str | None:
        """Write the plan. Every child write checks ownership first (kaito.k8s); a refused
        write raises NameConflictError or ChildWriteError before the status is written.
        The Workspace's resourceVersion after a status write, else None."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        owner = Owner.of(body)
        if result.annotations:
            await self.kube.annotate(namespace, name, result.annotations)
            self.stats.writes += 1
        applied: set[tuple[str, str]] = set()
        if any(obj["kind"] == "NodeClaim" for obj in result.apply):
            async with self.claims_lock:
                # One Workspace at a time counts and creates claims, so the total holds.
                await self.check_claim_total(result)
                try:
                    claim_failure = await self._apply_all(body, result, owner, applied)
                finally:
                    if self.claims_counted is not None:
                        created = sum(1 for kind, _ in applied if kind == "NodeClaim")
                        total, listed_at = self.claims_counted
                        self.claims_counted = (total + created, listed_at)
        else:
            # Nothing to count: other workspaces' writes need not wait for this one.
            claim_failure = await self._apply_all(body, result, owner, applied)
        if claim_failure is not None:
            # Announce the claims that did go out; the failure itself goes to the status.
            for event in result.events:
                if event.subject is not None and event.subject in applied:
                    await self.kube.event(body, event)
            raise claim_failure
        for ref in result.delete:
            await self.kube.delete(ref, owner)
            self.stats.writes += 1
        old = body.get("status") or {}
        status = result.status
        # A pass that wrote everything ends the previous passes' failure.
        cleared = recovered_status(status if status is not None else old)
        status = cleared if cleared is not None else status
        version = None
        if status is not None:
            version = await self.kube.write_status(namespace, name, old, status)
            self.stats.writes += 1
        for event in result.events:
            if event.subject is not None and event.subject not in applied:
                continue  # announces an object whose apply failed
            await self.kube.event(body, event)
        return version

    async def _apply_all(
        self, body: Mapping[str, Any], result: Plan, owner: Owner, applied: set[tuple[str, str]]
    ) -> ChildWriteError | None:
        """Apply the plan's objects in order; a failed NodeClaim is returned (after the other
        claims went out), any other failure raised."""
        claim_failure: ChildWriteError | None = None
        for obj in result.apply:
            try:
                await self.kube.apply(obj, owner)
            except ChildWriteError as error:
                if obj["kind"] == "NodeClaim":
                    # One failed claim must not stop the others (upstream §8.1).
                    await self.kube.event(
                        body, Event("Warning", "NodeClaimCreationFailed", error.message)
                    )
                    self.stats.errors += 1
                    claim_failure = claim_failure or error
                    continue
                raise
            applied.add((obj["kind"], obj["metadata"]["name"]))
            self.stats.writes += 1
        return claim_failure

    async def check_claim_total(self, result: Plan) -> None:
        """Refuse new NodeClaims that would pass KAITO_MAX_NODECLAIMS_TOTAL."""
        limit = self.settings.max_nodeclaims_total
        wanted = sum(1 for obj in result.apply if obj["kind"] == "NodeClaim")
        if not wanted or not limit:
            return
        existing = await self.claim_total(wanted, limit)
        if existing + wanted > limit:
            raise NodeClaimLimitError(wanted, existing, limit)

    async def claim_total(self, wanted: int, limit: int) -> int:
        """The NodeClaims of all Workspaces (called under claims_lock).

        Listing every claim for every workspace that creates one made a burst of N
        Workspaces cost N lists of up to N claims. Claims are created only here, under the
        lock, so the last list plus what was created since is the total, give or take
        deletions (an over-count, so never more than the limit). It is listed again when
        older than CLAIM_COUNT_TTL_S, and before refusing, so a refusal is always on a
        fresh list.
        """
        counted = self.claims_counted
        fresh = counted is not None and time.monotonic() - counted[1] < CLAIM_COUNT_TTL_S
        if counted is not None and fresh and counted[0] + wanted <= limit:
            return counted[0]
        listed_at = time.monotonic()
        total = await self.kube.count_nodeclaims()
        self.claims_counted = (total, listed_at)
        return total

    async def report(self, body: Mapping[str, Any], failure: Failure) -> None:
        """The failure as the ReconcileError condition (and WorkspaceSucceeded) plus one
        aggregated Warning Event; reporting problems are logged, never raised."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        old = body.get("status") or {}
        status = failed_status(
            old, failure, generation=int(meta.get("generation") or 0), now=rfc3339()
        )
        try:
            if status is not None:
                await self.kube.write_status(namespace, name, old, status)
                self.stats.writes += 1
        except (ApiError, OSError) as error:
            log.warning("%s/%s: could not report %s: %s", namespace, name, failure.reason, error)
        await self.kube.event(body, Event("Warning", failure.reason, failure.message))

    async def run_loop(self, body: Mapping[str, Any], stopped: Any) -> None:
        """Reconcile a workspace until kopf stops its daemon; sleep on events, not polls.

        A failed pass is reported in the status and retried after errorBackoffSeconds,
        doubling per failure in a row up to errorBackoffMaxSeconds; during that wait only a
        new Workspace generation (the user changed the spec) retries early.
        """
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        wake = self.wakeup(namespace, name)
        failures = 0
        try:
            while not stopped:
                wake.clear()
                delay: float | None
                generation = _generation(body)
                try:
                    result = await self.reconcile(body)
                    delay = result.requeue_after
                    failures = 0
                except Exception as error:  # classified below; unexpected ones re-raise
                    failure = failure_of(error)
                    if failure is not None:
                        failures += 1
                        self.stats.errors += 1
                        delay = await self.failed(body, failure, failures)
                        await self.back_off(body, wake, stopped, generation, delay)
                        continue
                    outcome = classify(error)
                    if outcome.tier == "unexpected":
                        self.stats.errors += 1
                        raise
                    log.info("%s/%s: %s (%s)", namespace, name, outcome.message, outcome.tier)
                    delay = outcome.delay if outcome.tier == "temporary" else None
                await sleep_until(wake, stopped, delay or self.settings.resync_seconds)
                if not wake.is_set() and not stopped:
                    self.stats.woken["timer"] = self.stats.woken.get("timer", 0) + 1
                if wake.is_set() and not stopped:
                    # A child's changes come in bursts (a pod is created, scheduled, started,
                    # ready within milliseconds on a fast node): one pass reads the burst.
                    await asyncio.sleep(WAKE_BATCH_S)
        finally:
            self.forget(namespace, name)

    async def back_off(
        self,
        body: Mapping[str, Any],
        wake: asyncio.Event,
        stopped: Any,
        generation: int,
        seconds: float,
    ) -> None:
        """Wait `seconds`; child events do not end the wait, a new generation does."""
        deadline = time.monotonic() + seconds
        while not stopped and (left := deadline - time.monotonic()) > 0:
            wake.clear()
            await sleep_until(wake, stopped, left)
            if _generation(body) != generation:
                return

    async def failed(self, body: Mapping[str, Any], failure: Failure, failures: int) -> float:
        """Report a failed pass (after the quiet retries of a retryable one); the delay."""
        meta = body.get("metadata") or {}
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        if failure.retryable and failures <= QUIET_RETRIES:
            log.info("%s: %s (retrying)", where, failure.message)
            return QUIET_RETRY_S
        log.warning("%s: %s: %s", where, failure.reason, failure.message)
        await self.report(body, failure)
        quiet = QUIET_RETRIES if failure.retryable else 0
        return backoff_seconds(
            failures - quiet,
            self.settings.error_backoff_seconds,
            self.settings.error_backoff_max_seconds,
        )


def _deleting(body: Mapping[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


def workspace_key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace")), str(meta.get("name"))


def _inputs(body: Mapping[str, Any]) -> Any:
    """What a pass reads from the Workspace besides its status (the planner is a function of
    this, the status and the children): everything but status and resourceVersion."""
    # managedFields: a status write stamps its own entry's time.
    meta = {
        k: v
        for k, v in (body.get("metadata") or {}).items()
        if k not in ("resourceVersion", "managedFields")
    }
    rest = {k: v for k, v in body.items() if k not in ("status", "metadata")}
    return json.dumps([meta, rest], sort_keys=True, default=str)


def _generation(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)


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
