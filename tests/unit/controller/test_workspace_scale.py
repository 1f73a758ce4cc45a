"""Workspace replicas: spec.replicas grows the StatefulSet and the NodeClaims, and a
scale-down releases the claims no remaining pod runs on."""

from __future__ import annotations

import copy

from kaito.manifests.nodeclaim import nodeclaim_name
from kaito.reconcile.planner import plan
from kaito.reconcile.types import Observed
from tests.unit.controller.builders import (
    NOW,
    OPTIONS,
    after,
    applied,
    condition,
    make_workspace,
    multi_gpu_inference,
    node_for,
    one,
    pod,
    ready_claim,
    ready_statefulset,
    stored,
)

JSON = dict[str, object]
NAME = "phi"


def serving(replicas: int | None = None) -> dict[str, object]:
    body = make_workspace(NAME).inference("phi-3-mini-4k-instruct").obj()
    if replicas is not None:
        body["spec"] = {"replicas": replicas}
    return stored(body)


def scaled_to(body: dict[str, object], replicas: int) -> dict[str, object]:
    out = copy.deepcopy(body)
    out["spec"] = {"replicas": replicas}
    return out


def running(body: dict[str, object], claims: int) -> tuple[dict[str, object], Observed]:
    """The workspace once `claims` claims, their nodes and pods are up (one pod per node)."""
    first = plan(body, Observed(), OPTIONS, now=NOW)
    planned = [ready_claim(c) for c in applied(first, "NodeClaim")]
    assert len(planned) == claims
    observed = Observed(nodeclaims=tuple(planned), nodes=tuple(node_for(c) for c in planned))
    second = plan(after(body, first), observed, OPTIONS, now=NOW)
    sts = ready_statefulset(one(second, "StatefulSet"))
    pods = []
    for index, claim in enumerate(planned):
        p = pod(f"{NAME}-{index}", NAME)
        p["spec"] = {"nodeName": claim["metadata"]["name"]}
        pods.append(p)
    return after(after(body, first), second), Observed(
        nodeclaims=tuple(planned),
        nodes=observed.nodes,
        statefulset=sts,
        pods=tuple(pods),
    )


def test_one_replica_is_the_default_and_keeps_the_leader_only_service() -> None:
    result = plan(serving(), Observed(), OPTIONS, now=NOW)
    assert len(applied(result, "NodeClaim")) == 1
    assert result.status is not None
    assert result.status["perReplicaNodeCount"] == 1
    assert result.status["selector"] == f"kaito.sh/workspace={NAME}"


def test_three_replicas_ask_for_three_nodes_and_a_three_pod_statefulset() -> None:
    body, observed = running(serving(3), claims=3)
    result = plan(body, observed, OPTIONS, now=NOW)
    assert condition(result.status or body["status"], "ResourceReady")["status"] == "True"  # type: ignore[arg-type]
    sts = observed.statefulset
    assert sts is not None and sts["spec"]["replicas"] == 3
    status = result.status or body["status"]
    assert status["targetNodeCount"] == 3  # type: ignore[index]
    assert status["replicas"] == 3 and status["readyReplicas"] == 3  # type: ignore[index]


def test_all_replicas_serve_behind_the_workspace_service() -> None:
    body, _ = running(serving(2), claims=2)
    from kaito.manifests.context import resolve
    from kaito.manifests.inference import build_services
    from kaito.reconcile.planner import parse

    ws = parse(body)
    assert not isinstance(ws, Exception)
    main = build_services(resolve(ws, OPTIONS))[0]
    assert main["spec"]["selector"] == {"kaito.sh/workspace": NAME}
    single = parse(serving())
    assert not isinstance(single, Exception)
    leader = build_services(resolve(single, OPTIONS))[0]
    assert leader["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == f"{NAME}-0"


def test_scaling_up_adds_claims_without_touching_the_existing_ones() -> None:
    body, observed = running(serving(1), claims=1)
    result = plan(scaled_to(body, 3), observed, OPTIONS, now=NOW)
    names = [c["metadata"]["name"] for c in applied(result, "NodeClaim")]
    assert names == [nodeclaim_name("default", NAME, i) for i in (1, 2)]
    assert not result.delete
    assert result.status is not None and result.status["targetNodeCount"] == 3


def test_scaling_up_keeps_the_revision_so_pods_are_not_rolled() -> None:
    body, observed = running(serving(1), claims=1)
    result = plan(scaled_to(body, 2), observed, OPTIONS, now=NOW)
    assert result.annotations == {}
    sts = one(result, "StatefulSet")
    assert observed.statefulset is not None
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["template"] == observed.statefulset["spec"]["template"]


def test_scaling_down_releases_the_claims_of_the_pods_that_go() -> None:
    body, observed = running(serving(3), claims=3)
    result = plan(scaled_to(body, 1), observed, OPTIONS, now=NOW)
    sts = one(result, "StatefulSet")
    assert sts["spec"]["replicas"] == 1
    kept = observed.pods[0]["spec"]["nodeName"]  # type: ignore[index]
    released = sorted(ref.name for ref in result.delete if ref.kind == "NodeClaim")
    assert len(released) == 2 and kept not in released
    assert not applied(result, "NodeClaim")


def test_scaling_down_never_releases_the_node_of_a_pod_that_stays() -> None:
    body, observed = running(serving(2), claims=2)
    # Pod 0 landed on the claim with the higher index.
    pods = list(observed.pods)
    pods[0]["spec"]["nodeName"], pods[1]["spec"]["nodeName"] = (  # type: ignore[index]
        pods[1]["spec"]["nodeName"],  # type: ignore[index]
        pods[0]["spec"]["nodeName"],  # type: ignore[index]
    )
    import dataclasses

    observed = dataclasses.replace(observed, pods=tuple(pods))
    result = plan(scaled_to(body, 1), observed, OPTIONS, now=NOW)
    released = [ref.name for ref in result.delete if ref.kind == "NodeClaim"]
    assert released == [nodeclaim_name("default", NAME, 0)]


def test_an_unchanged_replica_count_releases_nothing() -> None:
    body, observed = running(serving(2), claims=2)
    result = plan(body, observed, OPTIONS, now=NOW)
    assert not [ref for ref in result.delete if ref.kind == "NodeClaim"]


def test_a_multi_node_replica_cannot_be_scaled_past_one() -> None:
    body = multi_gpu_inference()
    body["spec"] = {"replicas": 2}
    result = plan(body, Observed(), OPTIONS, now=NOW)
    assert not applied(result, "NodeClaim")
    assert result.error is not None
    assert result.error.reason in ("MultiNodeReplicasUnsupported", "InvalidWorkspace")


def test_a_workspace_from_before_replicas_keeps_its_frozen_node_count() -> None:
    body = multi_gpu_inference()
    body["status"] = {"targetNodeCount": 2}
    result = plan(body, Observed(), OPTIONS, now=NOW)
    assert result.status is not None
    assert result.status["perReplicaNodeCount"] == 2
    assert result.status["targetNodeCount"] == 2


def test_replicas_up_to_the_per_workspace_node_cap_are_admitted_and_one_more_is_not() -> None:
    from kaito.api.workspace import parse_workspace
    from kaito.presets.limits import Limits, node_count_errors

    cap = Limits().max_nodeclaims_per_workspace
    at_cap = parse_workspace(serving(cap))
    past = parse_workspace(serving(cap + 1))
    assert node_count_errors(at_cap, None, None, Limits()) == []
    errors = node_count_errors(past, None, None, Limits())
    assert [e.field for e in errors] == ["spec.replicas"]
    assert str(cap) in errors[0].message
