"""What every part of the planner shares: body fields, the status merge, requeue floors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kaito.manifests.common import applied_hash
from kaito.reconcile import conditions as c
from kaito.reconcile.conditions import Cond
from kaito.reconcile.types import JSON

# Requeue delays (seconds). Child events wake the controller earlier; these are the floor
# for what is not watched (Nodes) and a safety net for missed events.
NODES_POLL_S = 2.0
CLAIMS_POLL_S = 10.0
WORKLOAD_POLL_S = 10.0
CONFIG_POLL_S = 15.0


def old_status(body: Mapping[str, Any]) -> JSON:
    return dict(body.get("status") or {})


def generation(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)


def annotations_of(body: Mapping[str, Any]) -> Mapping[str, str]:
    return (body.get("metadata") or {}).get("annotations") or {}


def finish_status(
    body: Mapping[str, Any],
    conds: Sequence[Cond],
    *,
    now: str,
    remove: Sequence[str] = (),
    **fields: Any,
) -> JSON | None:
    """The new status, or None when it equals the current one."""
    old = old_status(body)
    new = dict(old)
    new["conditions"] = c.merge_conditions(
        old.get("conditions"), conds, generation=generation(body), now=now, remove=remove
    )
    for key, value in fields.items():
        if value is None:
            new.pop(key, None)
        else:
            new[key] = value
    return None if new == old else new


def next_state(old_state: str | None, ready: bool) -> str:
    if ready:
        return "Ready"
    return "NotReady" if old_state in ("Ready", "NotReady") else "Pending"


def changed(desired: JSON, observed: Mapping[str, Any] | None) -> bool:
    """Whether `desired` differs from what is stored (by the hash recorded at apply)."""
    return observed is None or applied_hash(observed) != applied_hash(desired)
