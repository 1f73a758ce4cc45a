"""The planner refuses what admission would refuse, and stops asking for nodes that never come."""

from __future__ import annotations

import copy
from typing import Any

from kaito.manifests.options import ClusterOptions
from kaito.presets.limits import Limits
from kaito.reconcile.planner import plan
from kaito.reconcile.types import Observed
from tests.unit.controller.builders import (
    NOW,
    OPTIONS,
    applied,
    inference_workspace,
    stored,
)

JSON = dict[str, Any]
TIMEOUT = ClusterOptions(node_ready_timeout_s=600)


def multi_gpu_inference() -> JSON:
    """Two nodes of transformers serving (kaito runs vLLM on one node only)."""
    body = inference_workspace(name="pair")
    body["resource"]["count"] = 2
    body["metadata"]["annotations"] = {"kaito.sh/runtime": "transformers"}
    return stored(body)


def condition(status: JSON | None, type_: str) -> JSON:
    assert status is not None
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_workspace_the_webhook_would_refuse_gets_no_objects() -> None:
    # A 63-character name would end in a 422 for the StatefulSet's pods.
    body = stored(inference_workspace(name="a" * 63))
    result = plan(body, Observed(), OPTIONS, now=NOW)
    assert result.apply == ()
    assert result.error is not None and result.error.reason == "InvalidWorkspace"
    failed = condition(result.status, "WorkspaceSucceeded")
    assert failed["reason"] == "InvalidWorkspace"
    assert "the maximum here is 52" in failed["message"]


def test_the_planner_uses_the_operators_limits() -> None:
    body = multi_gpu_inference()
    assert applied(plan(body, Observed(), OPTIONS, now=NOW), "NodeClaim")
    capped = ClusterOptions(limits=Limits(max_nodeclaims_per_workspace=1))
    result = plan(body, Observed(), capped, now=NOW)
    assert result.apply == ()
    assert (
        "more than the 1 one Workspace may ask for"
        in condition(result.status, "WorkspaceSucceeded")["message"]
    )


def claims_created_at(body: JSON, created: str) -> list[JSON]:
    claims = applied(plan(body, Observed(), TIMEOUT, now=NOW), "NodeClaim")
    out = copy.deepcopy(claims)
    for claim in out:
        claim["metadata"]["creationTimestamp"] = created
    return out


def test_a_claim_within_the_timeout_is_waited_for() -> None:
    body = multi_gpu_inference()
    claims = claims_created_at(body, "2026-11-28T11:50:00Z")  # 600 s before NOW
    result = plan(body, Observed(nodeclaims=tuple(claims)), TIMEOUT, now=NOW)
    assert condition(result.status, "NodeClaimReady")["reason"] != "NodeClaimTimeout"
    assert result.requeue_after is not None


def test_a_claim_past_the_timeout_stops_the_workspace_asking_for_nodes() -> None:
    body = multi_gpu_inference()
    claims = claims_created_at(body, "2026-11-28T11:49:59Z")  # 601 s before NOW
    result = plan(body, Observed(nodeclaims=(claims[0],)), TIMEOUT, now=NOW)
    timed_out = condition(result.status, "NodeClaimReady")
    assert (timed_out["status"], timed_out["reason"]) == ("False", "NodeClaimTimeout")
    assert claims[0]["metadata"]["name"] in timed_out["message"]
    assert condition(result.status, "ResourceReady")["reason"] == "NodeClaimTimeout"
    assert applied(result, "NodeClaim") == []  # the second claim is not asked for either
    assert result.requeue_after is None

    # The claim is deleted (e.g. by the provisioner): not asked for again at this generation.
    body["status"] = result.status
    again = plan(body, Observed(), TIMEOUT, now=NOW)
    assert applied(again, "NodeClaim") == []
    assert condition(again.status or body["status"], "NodeClaimReady")["reason"] == (
        "NodeClaimTimeout"
    )

    # A spec change (new generation) tries again.
    body["metadata"]["generation"] += 1
    assert len(applied(plan(body, Observed(), TIMEOUT, now=NOW), "NodeClaim")) == 2


def test_no_timeout_means_waiting_forever() -> None:
    body = multi_gpu_inference()
    claims = claims_created_at(body, "2020-01-01T00:00:00Z")
    forever = ClusterOptions(node_ready_timeout_s=0)
    result = plan(body, Observed(nodeclaims=tuple(claims)), forever, now=NOW)
    assert condition(result.status, "NodeClaimReady")["reason"] != "NodeClaimTimeout"
