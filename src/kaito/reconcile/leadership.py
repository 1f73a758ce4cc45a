"""Leader election decisions on a coordination.k8s.io/v1 Lease, as pure functions of data."""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease's spec that leader election reads and writes."""

    holder: str = ""
    lease_duration_s: int = 15
    acquire_time: datetime.datetime | None = None
    renew_time: datetime.datetime | None = None
    transitions: int = 0


@dataclass(frozen=True)
class Observation:
    """A Lease record and when this process first saw it (on its own clock).

    Expiry is judged from when the record last changed as seen here, not from the holder's
    `renewTime`, so clock skew between machines cannot make a live leader look expired
    (client-go's leader election does the same).
    """

    record: LeaseRecord
    seen_at: datetime.datetime


class Verdict(enum.StrEnum):
    CREATE = "create"  # no Lease yet: create it, holding it
    RENEW = "renew"  # this process holds it: write a new renewTime
    TAKE_OVER = "take-over"  # released or expired: write this process as the holder
    WAIT = "wait"  # someone else holds a live lease: stay standby


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    write: LeaseRecord | None  # what to write (None when waiting)
    observation: Observation | None  # keep for the next call (None after create/renew/take-over)


def decide(
    current: LeaseRecord | None,
    *,
    identity: str,
    now: datetime.datetime,
    lease_duration_s: int,
    last: Observation | None = None,
) -> Decision:
    """What a candidate called `identity` does with the Lease as read at `now`.

    `last` is the observation returned by the previous call (None on the first).
    """
    if current is None:
        record = LeaseRecord(identity, lease_duration_s, now, now, 0)
        return Decision(Verdict.CREATE, record, None)
    if current.holder == identity:
        renewed = replace(current, lease_duration_s=lease_duration_s, renew_time=now)
        return Decision(Verdict.RENEW, renewed, None)
    observation = last if last is not None and last.record == current else Observation(current, now)
    if not current.holder or expired(observation, now):
        record = LeaseRecord(identity, lease_duration_s, now, now, current.transitions + 1)
        return Decision(Verdict.TAKE_OVER, record, None)
    return Decision(Verdict.WAIT, None, observation)


def expired(observation: Observation, now: datetime.datetime) -> bool:
    """True once the holder has not renewed for its whole lease duration (as seen here)."""
    duration = datetime.timedelta(seconds=max(observation.record.lease_duration_s, 1))
    return now >= observation.seen_at + duration


def renew_overdue(
    last_renewed: datetime.datetime, now: datetime.datetime, renew_deadline_s: float
) -> bool:
    """True when the leader has failed to renew for `renew_deadline_s`: it must stop leading.

    The deadline is shorter than the lease duration, so the old leader stops before any
    standby may take over.
    """
    return (now - last_renewed).total_seconds() >= renew_deadline_s


def released(record: LeaseRecord, now: datetime.datetime) -> LeaseRecord:
    """The record a leader writes on a clean shutdown, so a standby takes over at once."""
    return replace(record, holder="", lease_duration_s=1, renew_time=now)


def check_timings(lease_duration_s: float, renew_deadline_s: float, retry_period_s: float) -> None:
    """Raise ValueError unless retry period < renew deadline < lease duration (all > 0)."""
    if not 0 < retry_period_s < renew_deadline_s < lease_duration_s:
        raise ValueError(
            "leader election needs 0 < retry period < renew deadline < lease duration, got "
            f"{retry_period_s} s, {renew_deadline_s} s, {lease_duration_s} s"
        )
