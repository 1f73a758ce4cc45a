"""The operator's leader-election Lease (coordination.k8s.io/v1): get, create, update."""

from __future__ import annotations

from dataclasses import dataclass

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from kaito.k8s.client import is_conflict, is_not_found
from kaito.reconcile.leadership import LeaseRecord


@dataclass(frozen=True)
class StoredLease:
    """A Lease as read: its record, and the resourceVersion an update must carry."""

    record: LeaseRecord
    resource_version: str


def to_record(lease: Lease) -> LeaseRecord:
    spec = lease.spec or LeaseSpec()
    return LeaseRecord(
        holder=spec.holderIdentity or "",
        lease_duration_s=spec.leaseDurationSeconds or 0,
        acquire_time=spec.acquireTime,
        renew_time=spec.renewTime,
        transitions=spec.leaseTransitions or 0,
    )


def _version(lease: Lease) -> str:
    return (lease.metadata.resourceVersion if lease.metadata else None) or ""


def to_spec(record: LeaseRecord) -> LeaseSpec:
    return LeaseSpec(
        holderIdentity=record.holder or None,
        leaseDurationSeconds=record.lease_duration_s,
        acquireTime=record.acquire_time,
        renewTime=record.renew_time,
        leaseTransitions=record.transitions,
    )


class LeaseStore:
    """One named Lease. Writes are optimistic: a concurrent writer makes them return None."""

    def __init__(self, client: AsyncClient, namespace: str, name: str) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name

    @classmethod
    def from_env(cls, namespace: str, name: str) -> LeaseStore:
        """KUBECONFIG (or ~/.kube/config), else the in-cluster service account."""
        return cls(AsyncClient(KubeConfig.from_env()), namespace, name)

    async def close(self) -> None:
        await self.client.close()

    async def read(self) -> StoredLease | None:
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as error:
            if is_not_found(error):
                return None
            raise
        return StoredLease(to_record(lease), _version(lease))

    async def create(self, record: LeaseRecord) -> StoredLease | None:
        """Create the Lease holding `record`; None if another candidate created it first."""
        lease = Lease(
            metadata=ObjectMeta(name=self.name, namespace=self.namespace), spec=to_spec(record)
        )
        try:
            created = await self.client.create(lease)
        except ApiError as error:
            if is_conflict(error):  # 409 AlreadyExists
                return None
            raise
        return StoredLease(to_record(created), _version(created))

    async def update(self, record: LeaseRecord, resource_version: str) -> StoredLease | None:
        """Replace the spec if the Lease is still at `resource_version`; None on a conflict."""
        lease = Lease(
            metadata=ObjectMeta(
                name=self.name, namespace=self.namespace, resourceVersion=resource_version
            ),
            spec=to_spec(record),
        )
        try:
            updated = await self.client.replace(lease)
        except ApiError as error:
            if is_conflict(error):
                return None
            raise
        return StoredLease(to_record(updated), _version(updated))
