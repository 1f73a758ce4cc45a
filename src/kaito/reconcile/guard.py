"""What the planner refuses before acting: a Workspace its webhook would refuse, and more
NodeClaims for a Workspace whose claims did not become Ready within the timeout."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from kaito.api.workspace import Workspace
from kaito.manifests.errors import SpecError
from kaito.manifests.options import ClusterOptions
from kaito.presets.validation import admission_message, webhook_errors
from kaito.reconcile import conditions as c
from kaito.reconcile.common import generation, old_status
from kaito.reconcile.conditions import Cond
from kaito.reconcile.nodes import NodePicture, claim_ready, name_of

NODECLAIM_TIMEOUT = "NodeClaimTimeout"


def refuse_invalid(workspace: Workspace, options: ClusterOptions) -> None:
    """Raise SpecError when admission would refuse the Workspace: a webhook that was down
    or bypassed (failurePolicy Ignore, a direct etcd write) must not lead to action."""
    errors = webhook_errors(
        workspace,
        cloud_provider=options.cloud_provider,
        release_namespace=options.release_namespace,
        vllm_enabled=options.vllm_enabled,
        allowed_hosts=options.tuning_allowed_hosts,
        limits=options.limits,
    )
    message = admission_message(errors)
    if message:
        raise SpecError(
            "InvalidWorkspace", f"{message} (admission refuses this spec; kaito does not act on it)"
        )


def _seconds_between(earlier: str, later: str) -> float | None:
    try:
        start = datetime.datetime.fromisoformat(earlier.replace("Z", "+00:00"))
        end = datetime.datetime.fromisoformat(later.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (end - start).total_seconds()


def claim_timeout(
    body: Mapping[str, Any], pic: NodePicture, options: ClusterOptions, *, now: str
) -> Cond | None:
    """NodeClaimReady=False/NodeClaimTimeout when a claim has not become Ready within
    options.node_ready_timeout_s; it stays (no new claims, no polling) until the spec
    changes, so a node that never comes up is not asked for again and again."""
    limit = options.node_ready_timeout_s
    if not limit or pic.claims_ready:
        return None
    old = c.find(old_status(body).get("conditions"), c.NODECLAIM_READY)
    if (
        old is not None
        and old.get("reason") == NODECLAIM_TIMEOUT
        and old.get("observedGeneration") == generation(body)
    ):
        return Cond.of(c.NODECLAIM_READY, False, NODECLAIM_TIMEOUT, str(old.get("message")))
    late = _late_claims(pic.live_claims, limit, now)
    if not late:
        return None
    return Cond.of(
        c.NODECLAIM_READY,
        False,
        NODECLAIM_TIMEOUT,
        f"NodeClaim {', '.join(late)} not Ready after {limit:g} s (KAITO_NODE_READY_TIMEOUT"
        "_SECONDS): kaito stops asking for nodes; check the node provisioner, then change "
        "the Workspace spec (or delete and re-create it) to try again",
    )


def _late_claims(claims: Sequence[Mapping[str, Any]], limit: float, now: str) -> list[str]:
    late = []
    for claim in claims:
        created = str((claim.get("metadata") or {}).get("creationTimestamp") or "")
        age = _seconds_between(created, now) if created else None
        if age is not None and age > limit and not claim_ready(claim):
            late.append(name_of(claim))
    return late


def with_timeout(conds: Sequence[Cond], timeout: Cond) -> list[Cond]:
    """The node conditions with NodeClaimReady (and ResourceReady) saying the timeout."""
    out = []
    for cond in conds:
        if cond.type == c.NODECLAIM_READY:
            out.append(timeout)
        elif cond.type == c.RESOURCE_READY:
            out.append(Cond(c.RESOURCE_READY, "False", timeout.reason, timeout.message))
        else:
            out.append(cond)
    return out
