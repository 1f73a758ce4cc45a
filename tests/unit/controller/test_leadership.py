"""Leader election on a Lease: the pure decisions on plain data, and the elector on a fake store."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import replace

import httpx
import pytest

from kaito.k8s.lease import StoredLease
from kaito.operator.leader import LeaderElector
from kaito.operator.settings import Settings, SettingsError
from kaito.reconcile.leadership import (
    LeaseRecord,
    Observation,
    Verdict,
    check_timings,
    decide,
    released,
    renew_overdue,
)

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def held_by(
    holder: str, *, renewed: float = 0, duration: int = 15, transitions: int = 0
) -> LeaseRecord:
    return LeaseRecord(holder, duration, at(0), at(renewed), transitions)


# --- decide ------------------------------------------------------------------------------


def test_with_no_lease_the_candidate_creates_one_holding_it() -> None:
    decision = decide(None, identity="a", now=at(0), lease_duration_s=15)
    assert decision.verdict is Verdict.CREATE
    assert decision.write == LeaseRecord("a", 15, at(0), at(0), 0)


def test_the_holder_renews_keeping_its_acquire_time() -> None:
    decision = decide(held_by("a"), identity="a", now=at(4), lease_duration_s=15)
    assert decision.verdict is Verdict.RENEW
    assert decision.write == LeaseRecord("a", 15, at(0), at(4), 0)


def test_a_standby_waits_while_the_holder_keeps_renewing() -> None:
    first = decide(held_by("a"), identity="b", now=at(1), lease_duration_s=15)
    assert first.verdict is Verdict.WAIT and first.write is None
    # The holder renewed: a new record, so the standby's clock starts again.
    second = decide(
        held_by("a", renewed=10),
        identity="b",
        now=at(14),
        lease_duration_s=15,
        last=first.observation,
    )
    assert second.verdict is Verdict.WAIT
    assert second.observation == Observation(held_by("a", renewed=10), at(14))
    third = decide(
        held_by("a", renewed=10),
        identity="b",
        now=at(28),
        lease_duration_s=15,
        last=second.observation,
    )
    assert third.verdict is Verdict.WAIT


def test_a_standby_takes_over_a_lease_unrenewed_for_its_duration() -> None:
    lease = held_by("a", transitions=3)
    seen = decide(lease, identity="b", now=at(1), lease_duration_s=15)
    assert (
        decide(
            lease, identity="b", now=at(15.9), lease_duration_s=15, last=seen.observation
        ).verdict
        is Verdict.WAIT
    )
    taken = decide(lease, identity="b", now=at(16), lease_duration_s=15, last=seen.observation)
    assert taken.verdict is Verdict.TAKE_OVER
    assert taken.write == LeaseRecord("b", 15, at(16), at(16), 4)


def test_expiry_is_judged_on_the_standbys_clock_not_the_holders_renew_time() -> None:
    # The holder's clock is an hour behind: its renewTime looks ancient, but it is renewing.
    skewed = held_by("a", renewed=-3600)
    decision = decide(skewed, identity="b", now=at(0), lease_duration_s=15)
    assert decision.verdict is Verdict.WAIT


def test_a_standby_that_starts_late_still_waits_one_duration_before_taking_over() -> None:
    stale = held_by("a", renewed=0)
    first = decide(stale, identity="b", now=at(600), lease_duration_s=15)
    assert first.verdict is Verdict.WAIT
    later = decide(stale, identity="b", now=at(615), lease_duration_s=15, last=first.observation)
    assert later.verdict is Verdict.TAKE_OVER


def test_a_released_lease_is_taken_over_at_once() -> None:
    free = released(held_by("a", transitions=1), at(5))
    assert free.holder == "" and free.lease_duration_s == 1
    decision = decide(free, identity="b", now=at(5), lease_duration_s=15)
    assert decision.verdict is Verdict.TAKE_OVER
    assert decision.write == LeaseRecord("b", 15, at(5), at(5), 2)


def test_the_lease_duration_written_is_the_candidates_own() -> None:
    decision = decide(held_by("a", duration=30), identity="a", now=at(1), lease_duration_s=15)
    assert decision.write is not None and decision.write.lease_duration_s == 15


def test_the_leader_stops_once_it_has_not_renewed_for_the_renew_deadline() -> None:
    assert not renew_overdue(at(0), at(9.9), 10)
    assert renew_overdue(at(0), at(10), 10)


@pytest.mark.parametrize(
    ("lease", "renew", "retry"), [(15, 15, 2), (15, 10, 10), (10, 15, 2), (15, 10, 0)]
)
def test_timings_must_leave_room_between_retry_renew_and_lease(
    lease: float, renew: float, retry: float
) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        check_timings(lease, renew, retry)


def test_settings_default_to_controller_runtimes_timings_and_no_election() -> None:
    settings = Settings.from_env({})
    assert not settings.leader_election
    assert (
        settings.leader_election_lease_duration,
        settings.leader_election_renew_deadline,
        settings.leader_election_retry_period,
    ) == (15.0, 10.0, 2.0)
    assert settings.lease_namespace == "kaito-system"
    assert Settings.from_env({"KAITO_LEADER_ELECTION_NAMESPACE": "x"}).lease_namespace == "x"


def test_settings_refuse_a_renew_deadline_longer_than_the_lease() -> None:
    with pytest.raises(SettingsError, match="KAITO_LEADER_ELECTION_"):
        Settings.from_env({"KAITO_LEADER_ELECTION_RENEW_DEADLINE": "20"})


# --- the elector against a fake Lease store ----------------------------------------------


class FakeStore:
    """One Lease in memory with resourceVersion checks, like the API server's."""

    namespace = "kaito-system"
    name = "kaito-operator"

    def __init__(self) -> None:
        self.lease: StoredLease | None = None
        self.version = 0
        self.failing = False

    def _check(self) -> None:
        if self.failing:
            raise httpx.ConnectError("API server unreachable")

    def _store(self, record: LeaseRecord) -> StoredLease:
        self.version += 1
        self.lease = StoredLease(record, str(self.version))
        return self.lease

    async def read(self) -> StoredLease | None:
        self._check()
        return self.lease

    async def create(self, record: LeaseRecord) -> StoredLease | None:
        self._check()
        return None if self.lease is not None else self._store(record)

    async def update(self, record: LeaseRecord, resource_version: str) -> StoredLease | None:
        self._check()
        if self.lease is None or self.lease.resource_version != resource_version:
            return None
        return self._store(record)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


def elector(store: FakeStore, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(
        store,  # type: ignore[arg-type]
        identity=identity,
        lease_duration_s=15,
        renew_deadline_s=10,
        retry_period_s=2,
        clock=clock,
    )


async def test_exactly_one_of_two_candidates_leads_and_the_other_takes_over_after_expiry() -> None:
    store, clock = FakeStore(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert await a.try_once()
    assert not await b.try_once()
    for _ in range(10):  # a renews every retry period; b keeps waiting
        clock.advance(2)
        assert await a.try_once()
        assert not await b.try_once()
    # a dies: after one lease duration without a renewal, b takes over.
    clock.advance(14)
    assert not await b.try_once()
    clock.advance(2)
    assert await b.try_once()
    assert store.lease is not None and store.lease.record.holder == "b"
    assert store.lease.record.transitions == 1


async def test_a_leader_that_cannot_renew_gives_up_after_the_renew_deadline() -> None:
    store, clock = FakeStore(), Clock()
    a = elector(store, clock, "a")
    assert await a.try_once()
    store.failing = True
    a.retry_period_s = 0.001  # the fake clock, not the sleep, decides the deadline
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            clock.advance(1)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        await asyncio.wait_for(a.hold(), timeout=5)
    finally:
        ticker.cancel()
    assert (clock.now - T0).total_seconds() >= 10


async def test_a_leader_that_sees_another_holder_stops_at_once() -> None:
    store, clock = FakeStore(), Clock()
    a = elector(store, clock, "a")
    assert await a.try_once()
    assert store.lease is not None
    store._store(replace(store.lease.record, holder="intruder"))
    a.retry_period_s = 0.001
    await asyncio.wait_for(a.hold(), timeout=5)


async def test_a_clean_shutdown_releases_the_lease_for_the_standby() -> None:
    store, clock = FakeStore(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert await a.try_once()
    assert not await b.try_once()
    await a.release()
    assert store.lease is not None and store.lease.record.holder == ""
    assert await b.try_once()


async def test_a_standby_never_releases_the_leaders_lease() -> None:
    store, clock = FakeStore(), Clock()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert await a.try_once()
    assert not await b.try_once()
    await b.release()
    assert store.lease is not None and store.lease.record.holder == "a"
