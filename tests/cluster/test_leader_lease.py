"""The leader-election Lease against the real API server: optimistic writes and two electors."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from kaito.k8s.lease import LeaseStore
from kaito.operator.leader import LeaderElector
from kaito.reconcile.leadership import LeaseRecord

pytestmark = [pytest.mark.cluster]

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=datetime.UTC)


async def test_only_the_first_create_and_one_of_two_updates_at_a_version_succeed(
    kubeconfig_env: Path, namespace: str
) -> None:
    a = LeaseStore.from_env(namespace, "kaito-operator")
    b = LeaseStore.from_env(namespace, "kaito-operator")
    try:
        assert await a.read() is None
        record = LeaseRecord("a", 15, NOW, NOW, 0)
        created = await a.create(record)
        assert created is not None
        assert created.record == record  # microseconds survive the round trip (MicroTime)
        assert await b.create(LeaseRecord("b", 15, NOW, NOW, 0)) is None  # AlreadyExists

        later = NOW + datetime.timedelta(seconds=2)
        renewed = await a.update(LeaseRecord("a", 15, NOW, later, 0), created.resource_version)
        assert renewed is not None
        # b read before a's renewal: its write at the old version is refused (409 Conflict).
        stale = await b.update(LeaseRecord("b", 15, later, later, 1), created.resource_version)
        assert stale is None
        read = await b.read()
        assert read is not None and read.record.holder == "a" and read.record.renew_time == later
    finally:
        await a.close()
        await b.close()


async def test_two_electors_one_leads_and_a_release_hands_over(
    kubeconfig_env: Path, namespace: str
) -> None:
    stores = [LeaseStore.from_env(namespace, "kaito-operator") for _ in range(2)]
    first, second = (
        LeaderElector(
            store, identity=name, lease_duration_s=15, renew_deadline_s=10, retry_period_s=2
        )
        for store, name in zip(stores, ("first", "second"), strict=True)
    )
    try:
        assert await first.try_once()
        assert not await second.try_once()
        assert await first.try_once()  # renewal
        await first.release()
        assert await second.try_once()
        assert not await first.try_once()
        lease = await stores[0].read()
        assert lease is not None
        assert lease.record.holder == "second" and lease.record.transitions == 1
    finally:
        for store in stores:
            await store.close()


async def test_the_operator_waits_as_standby_leads_once_free_and_stops_when_the_lease_is_taken(
    kubeconfig_env: Path, namespace: str
) -> None:
    """serve() itself, both kopf operators in this process, with a fake `on_lost`."""
    import asyncio

    from kaito.operator.main import serve
    from kaito.operator.settings import Settings

    settings = Settings(
        leader_election=True,
        leader_election_namespace=namespace,
        leader_election_identity="me",
        leader_election_lease_duration=3,
        leader_election_renew_deadline=2,
        leader_election_retry_period=0.3,
        watch_namespace=namespace,
    )
    store = LeaseStore.from_env(namespace, "kaito-operator")
    lost = asyncio.Event()
    stop = asyncio.Event()

    async def holder() -> str:
        lease = await store.read()
        return lease.record.holder if lease else ""

    # Someone else holds a long lease: the operator must wait.
    taken = await store.create(LeaseRecord("other", 3600, NOW, NOW, 0))
    assert taken is not None
    running = asyncio.create_task(serve(settings, stop_flag=stop, on_lost=lost.set))
    try:
        await asyncio.sleep(3)
        assert await holder() == "other"
        assert not running.done()
        # "other" releases: the operator takes over within a retry period or two.
        current = await store.read()
        assert current is not None
        free = LeaseRecord("", 1, NOW, NOW, 0)
        assert await store.update(free, current.resource_version) is not None

        async with asyncio.timeout(10):
            while await holder() != "me":  # noqa: ASYNC110 (polling the API server)
                await asyncio.sleep(0.1)
        # Another candidate overwrites the Lease (as after a partition): leadership is lost.
        current = await store.read()
        assert current is not None
        intruder = LeaseRecord("intruder", 3600, NOW, NOW, 5)
        assert await store.update(intruder, current.resource_version) is not None
        await asyncio.wait_for(lost.wait(), timeout=10)
        # With a fake on_lost the process does not exit: serve stops everything and returns,
        # and leaves the new holder's Lease alone.
        await asyncio.wait_for(running, timeout=30)
        assert await holder() == "intruder"
    finally:
        stop.set()
        if not running.done():
            await asyncio.wait_for(running, timeout=30)
        await store.close()
