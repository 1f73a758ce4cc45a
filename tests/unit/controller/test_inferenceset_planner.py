"""The InferenceSet planner: replicas -> Workspaces, nodeCountLimit, rolling template changes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kaito.api.inferenceset import ANNOTATION_TEMPLATE_HASH, LABEL_INFERENCESET
from kaito.manifests.options import ClusterOptions
from kaito.reconcile.inferenceset import NODE_LIMIT, READY, plan_set

JSON = dict[str, Any]
NOW = "2026-11-28T12:00:00Z"
OPTIONS = ClusterOptions()
NAME = "chat"


class SetBuilder:
    """A valid InferenceSet body as stored, one step at a time."""

    def __init__(self, name: str = NAME) -> None:
        self._body: JSON = {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "InferenceSet",
            "metadata": {"name": name, "namespace": "default", "uid": "set-uid", "generation": 1},
            "spec": {
                "replicas": 1,
                "labelSelector": {"matchLabels": {"apps": name}},
                "template": {
                    "resource": {"instanceType": "Standard_NC24ads_A100_v4"},
                    "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
                },
            },
        }

    def replicas(self, n: int) -> SetBuilder:
        self._body["spec"]["replicas"] = n
        return self

    def node_limit(self, n: int) -> SetBuilder:
        self._body["spec"]["nodeCountLimit"] = n
        return self

    def preset(self, name: str, instance_type: str | None = None) -> SetBuilder:
        template = self._body["spec"]["template"]
        template["inference"]["preset"]["name"] = name
        if instance_type:
            template["resource"]["instanceType"] = instance_type
        return self

    def strategy(self, value: JSON) -> SetBuilder:
        self._body["spec"]["updateStrategy"] = value
        return self

    def obj(self) -> JSON:
        return copy.deepcopy(self._body)


def make_set(name: str = NAME) -> SetBuilder:
    return SetBuilder(name)


def ready(ws: JSON) -> JSON:
    out = copy.deepcopy(ws)
    out["status"] = {
        "conditions": [{"type": "WorkspaceSucceeded", "status": "True", "reason": "ok"}]
    }
    return out


def created(body: JSON) -> list[JSON]:
    """The Workspaces the set keeps once everything it planned exists and is ready."""
    result = plan_set(body, [], None, OPTIONS, now=NOW)
    return [ready(o) for o in result.apply if o["kind"] == "Workspace"]


def deleted(result: Any) -> tuple[str, ...]:
    return tuple(ref.name for ref in result.delete)


def workspaces(result: Any) -> list[str]:
    return [o["metadata"]["name"] for o in result.apply if o["kind"] == "Workspace"]


def cond(result: Any, type_: str) -> JSON:
    assert result.status is not None
    found: JSON = next(c for c in result.status["conditions"] if c["type"] == type_)
    return found


def test_three_replicas_are_three_workspaces_controlled_by_the_set() -> None:
    result = plan_set(make_set().replicas(3).obj(), [], None, OPTIONS, now=NOW)
    assert workspaces(result) == [f"{NAME}-0", f"{NAME}-1", f"{NAME}-2"]
    ws = next(o for o in result.apply if o["kind"] == "Workspace")
    (owner,) = ws["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("InferenceSet", "set-uid", True)
    assert ws["metadata"]["labels"][LABEL_INFERENCESET] == NAME
    assert ws["resource"]["labelSelector"] == {"matchLabels": {"apps": NAME}}
    assert ws["inference"]["preset"]["name"] == "phi-3-mini-4k-instruct"


def test_one_service_selects_the_pods_of_every_replica() -> None:
    result = plan_set(make_set().replicas(2).obj(), [], None, OPTIONS, now=NOW)
    (service,) = [o for o in result.apply if o["kind"] == "Service"]
    assert service["metadata"]["name"] == NAME
    assert service["spec"]["selector"] == {LABEL_INFERENCESET: NAME}
    assert result.status is not None and result.status["selector"] == f"{LABEL_INFERENCESET}={NAME}"


def test_status_counts_the_workspaces_and_the_ready_ones() -> None:
    body = make_set().replicas(2).obj()
    kept = created(body)
    kept[1]["status"] = {}
    result = plan_set(body, kept, None, OPTIONS, now=NOW)
    assert result.status is not None
    assert (result.status["replicas"], result.status["readyReplicas"]) == (2, 1)
    assert cond(result, READY)["status"] == "False"
    everything = plan_set(body, created(body), None, OPTIONS, now=NOW)
    assert cond(everything, READY)["status"] == "True"


def test_scaling_down_deletes_the_highest_indices() -> None:
    kept = created(make_set().replicas(3).obj())
    result = plan_set(make_set().replicas(1).obj(), kept, None, OPTIONS, now=NOW)
    assert deleted(result) == (f"{NAME}-2", f"{NAME}-1")
    assert workspaces(result) == []


def test_scaling_to_zero_keeps_no_workspace() -> None:
    kept = created(make_set().replicas(2).obj())
    result = plan_set(make_set().replicas(0).obj(), kept, None, OPTIONS, now=NOW)
    assert sorted(deleted(result)) == [f"{NAME}-0", f"{NAME}-1"]


def test_replicas_within_the_node_count_limit_are_all_created() -> None:
    # llama-3.3-70b with transformers on two-GPU A100s: two nodes per replica.
    body = make_set().replicas(2).node_limit(2).obj()
    result = plan_set(body, [], None, OPTIONS, now=NOW)
    assert len(workspaces(result)) == 2
    assert cond(result, NODE_LIMIT)["status"] == "False"


def test_a_replica_past_the_node_count_limit_is_refused_in_status() -> None:
    result = plan_set(make_set().replicas(3).node_limit(2).obj(), [], None, OPTIONS, now=NOW)
    assert workspaces(result) == [f"{NAME}-0", f"{NAME}-1"]
    refusal = cond(result, NODE_LIMIT)
    assert refusal["status"] == "True"
    assert "nodeCountLimit 2" in refusal["message"] and "3 replicas" in refusal["message"]


def test_the_limit_counts_nodes_per_replica() -> None:
    body = (
        make_set()
        .preset("llama-3.3-70b-instruct", "Standard_NC48ads_A100_v4")
        .replicas(2)
        .node_limit(3)
        .obj()
    )
    body["spec"]["template"]["metadata"] = {"annotations": {"kaito.sh/runtime": "transformers"}}
    body["spec"]["template"]["resource"]["count"] = 2
    body["spec"]["template"]["inference"]["preset"]["modelAccessSecret"] = "hf-token"
    result = plan_set(body, [], None, OPTIONS, now=NOW)
    assert result.error is None, result.status
    assert len(workspaces(result)) == 1
    assert "(2 per replica)" in cond(result, NODE_LIMIT)["message"]


def test_a_template_the_workspace_rules_refuse_creates_nothing() -> None:
    result = plan_set(make_set().preset("no-such-model").obj(), [], None, OPTIONS, now=NOW)
    assert result.apply == () and result.error is not None
    refusal = cond(result, READY)
    assert refusal["reason"] == "InvalidTemplate" and "no-such-model" in refusal["message"]


def test_a_template_change_replaces_one_ready_replica_at_a_time_highest_first() -> None:
    old = created(make_set().replicas(3).obj())
    new = make_set().replicas(3).obj()
    new["spec"]["template"]["inference"]["adapters"] = [
        {"source": {"name": "lora", "image": "registry.example.com/a:1"}}
    ]
    result = plan_set(new, old, None, OPTIONS, now=NOW)
    assert deleted(result) == (f"{NAME}-2",)
    # While that one is gone, nothing else is replaced (maxUnavailable 1).
    during = plan_set(new, old[:2], None, OPTIONS, now=NOW)
    assert deleted(during) == ()
    recreated = next(o for o in during.apply if o["kind"] == "Workspace")
    assert recreated["metadata"]["name"] == f"{NAME}-2"
    assert (
        recreated["metadata"]["annotations"][ANNOTATION_TEMPLATE_HASH]
        != (old[2]["metadata"]["annotations"][ANNOTATION_TEMPLATE_HASH])
    )


@pytest.mark.parametrize(
    ("strategy", "replaced"),
    [
        ({"type": "OnDelete"}, ()),
        ({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}, ("chat-2", "chat-1")),
        ({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}, ("chat-2",)),
        ({"type": "RollingUpdate", "rollingUpdate": {"partition": 3}}, ()),
    ],
    ids=["on-delete", "max-unavailable-2", "partition-2", "partition-3"],
)
def test_the_update_strategy_decides_what_is_replaced(
    strategy: JSON, replaced: tuple[str, ...]
) -> None:
    old = created(make_set().replicas(3).obj())
    new = make_set().replicas(3).strategy(strategy).obj()
    new["spec"]["template"]["inference"]["config"] = "tuned"
    result = plan_set(new, old, None, OPTIONS, now=NOW)
    assert deleted(result) == replaced


def test_replicas_only_change_does_not_roll() -> None:
    old = created(make_set().replicas(2).obj())
    result = plan_set(make_set().replicas(3).obj(), old, None, OPTIONS, now=NOW)
    assert deleted(result) == ()
    assert workspaces(result) == [f"{NAME}-2"]


def test_workspaces_of_other_names_are_left_alone() -> None:
    stranger = ready({"metadata": {"name": "chatty-0"}})
    result = plan_set(make_set().replicas(1).obj(), [stranger], None, OPTIONS, now=NOW)
    assert deleted(result) == ()
    assert workspaces(result) == [f"{NAME}-0"]
