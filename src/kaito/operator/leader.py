"""Leader election loop: acquire the Lease, renew it, and report when leadership is lost."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import uuid
from collections.abc import Callable

import httpx

from kaito.k8s.lease import LeaseStore, StoredLease
from kaito.reconcile.leadership import (
    Observation,
    Verdict,
    check_timings,
    decide,
    released,
    renew_overdue,
)

log = logging.getLogger("kaito.leader")
Clock = Callable[[], datetime.datetime]


def default_identity() -> str:
    """The pod name (a pod's host name) plus a random suffix: unique per process, so a
    restarted pod never mistakes its predecessor's lease for its own."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    """Candidate for one Lease; `acquire()` waits until leading, `hold()` returns when lost."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        identity: str,
        lease_duration_s: float,
        renew_deadline_s: float,
        retry_period_s: float,
        clock: Clock = utcnow,
    ) -> None:
        check_timings(lease_duration_s, renew_deadline_s, retry_period_s)
        self.store = store
        self.identity = identity
        # The Lease stores whole seconds; never round a short test duration down to zero.
        self.lease_duration_s = max(1, round(lease_duration_s))
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.clock = clock
        self.held: StoredLease | None = None
        self.last_renewed: datetime.datetime | None = None
        self._observation: Observation | None = None
        self._announced_holder: str | None = None

    @property
    def where(self) -> str:
        return f"Lease {self.store.namespace}/{self.store.name}"

    async def try_once(self) -> bool:
        """One acquire-or-renew attempt; True when this process holds the Lease afterwards.

        API errors count as a failed attempt (the caller retries); they are logged, not raised.
        """
        now = self.clock()
        try:
            # A hung API call must not outlive the renew deadline.
            async with asyncio.timeout(self.renew_deadline_s):
                return await self._attempt(now)
        except (httpx.HTTPError, OSError, TimeoutError) as error:
            log.warning("%s: %r", self.where, error)
            return False

    async def _attempt(self, now: datetime.datetime) -> bool:
        stored = await self.store.read()
        decision = decide(
            stored.record if stored else None,
            identity=self.identity,
            now=now,
            lease_duration_s=self.lease_duration_s,
            last=self._observation,
        )
        self._observation = decision.observation
        if decision.verdict is Verdict.WAIT:
            assert stored is not None
            self.held = None
            if self._announced_holder != stored.record.holder:
                self._announced_holder = stored.record.holder
                log.info(
                    "standby: %s is held by %s; reconciling waits for it",
                    self.where,
                    stored.record.holder,
                )
            return False
        assert decision.write is not None
        if decision.verdict is Verdict.CREATE:
            written = await self.store.create(decision.write)
        else:
            assert stored is not None
            written = await self.store.update(decision.write, stored.resource_version)
        if written is None:  # another candidate wrote first; read again next time
            self.held = None
            return False
        if decision.verdict is not Verdict.RENEW:
            log.info("leading: %s acquired by %s (%s)", self.where, self.identity, decision.verdict)
        self.held = written
        self.last_renewed = now
        return True

    async def acquire(self) -> None:
        """Return once this process holds the Lease (retrying every retry period)."""
        while True:
            if await self.try_once():
                return
            await asyncio.sleep(self.retry_period_s)

    async def hold(self) -> None:
        """Renew every retry period; return when leadership is lost.

        Lost means: another holder is seen, or no renewal succeeded within the renew deadline.
        """
        while True:
            await asyncio.sleep(self.retry_period_s)
            if await self.try_once():
                continue
            if self._observation is not None:  # someone else holds it now
                log.error("lost leadership: %s is held by %s", self.where, self._holder())
                return
            assert self.last_renewed is not None
            if renew_overdue(self.last_renewed, self.clock(), self.renew_deadline_s):
                log.error(
                    "lost leadership: %s not renewed for %.0f s", self.where, self.renew_deadline_s
                )
                return

    def _holder(self) -> str:
        return self._observation.record.holder if self._observation else "?"

    async def release(self) -> None:
        """On a clean shutdown: mark the Lease free so a standby need not wait for expiry."""
        if self.held is None:
            return
        try:
            current = await self.store.read()
            if current is None or current.record.holder != self.identity:
                return
            free = released(current.record, self.clock())
            await self.store.update(free, current.resource_version)
            log.info("released %s", self.where)
        except (httpx.HTTPError, OSError, TimeoutError) as error:
            log.warning("could not release %s: %s", self.where, error)
        finally:
            self.held = None
