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
