"""Builders for controller tests: workspaces as stored, nodes, NodeClaims, pods, workloads."""

from __future__ import annotations

import copy
from typing import Any

from kaito.manifests.keys import GPU_RESOURCE, LABEL_INSTANCE_TYPE, LABEL_WORKSPACE
from kaito.manifests.options import ClusterOptions
from kaito.reconcile.planner import plan
from kaito.reconcile.types import Observed, Plan
from tests.unit.api.builders import (
    adding,
    inference_workspace,
    legacy_tuning_workspace,
    make_workspace,
    tuning_workspace,
    with_,
)

JSON = dict[str, Any]
NOW = "2026-11-28T12:00:00Z"
LATER = "2026-11-28T12:05:00Z"
OPTIONS = ClusterOptions()
BYO = ClusterOptions(node_provisioner="byo")

__all__ = [
    "adding",
    "inference_workspace",
    "legacy_tuning_workspace",
    "make_workspace",
    "tuning_workspace",
    "with_",
]


def stored(
    body: JSON, *, namespace: str = "default", generation: int = 1, preflight_passed: bool = True
) -> JSON:
    """A body as the apiserver returns it: v1beta1, namespace, uid and generation set.

    A tuning body has passed its dataset preflight already (tests of what comes after it);
    `preflight_passed=False` gives one that has not run it yet.
    """
    out = copy.deepcopy(body)
    if preflight_passed and "tuning" in out:
        out.setdefault("status", {}).setdefault("conditions", []).append(
            {
                "type": "DatasetValidated",
                "status": "True",
                "reason": "PreflightPassed",
                "message": "dataset ok: 8 train / 2 eval rows",
                "observedGeneration": generation,
                "lastTransitionTime": "2026-11-28T11:59:00Z",
            }
        )
    out["apiVersion"] = "kaito.sh/v1beta1"
    meta = out.setdefault("metadata", {})
    meta.setdefault("namespace", namespace)
    meta.setdefault("uid", "0b3d6c0e-uid")
    meta["generation"] = generation
    if body.get("apiVersion") == "kaito.sh/v1alpha1" and "resource" in out:
        out["resource"].setdefault("instanceType", "Standard_NC24ads_A100_v4")
    return out


def legacy_tuning() -> JSON:
    return stored(legacy_tuning_workspace())


def multi_gpu_inference(name: str = "llama") -> JSON:
    """llama-3.3-70b on two 2-GPU A100 nodes: transformers, `resource.count: 2`.

    The multi-node placement kaito runs; vLLM would need one node (a multi-node vLLM placement
    is refused, see tests/unit/presets/test_vllm_placement.py).
    """
    body = (
        make_workspace(name)
        .inference("llama-3.3-70b-instruct")
        .instance_type("Standard_NC48ads_A100_v4")
        .count(2)
        .runtime("transformers")
        .model_access_secret("hf-token")  # llama is gated: admission asks for the token
    )
    return stored(body.obj())


def gpu_node(
    name: str,
    *,
    instance_type: str = "Standard_NC24ads_A100_v4",
    gpus: int = 1,
    labels: dict[str, str] | None = None,
    ready: bool = True,
) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {LABEL_INSTANCE_TYPE: instance_type, **(labels or {})},
        },
        "status": {
            "capacity": {GPU_RESOURCE: str(gpus)},
            "allocatable": {GPU_RESOURCE: str(gpus)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def ready_claim(claim: JSON, node_name: str | None = None) -> JSON:
    """A planned NodeClaim after the provisioner launched it and its node registered."""
    out = copy.deepcopy(claim)
    name = out["metadata"]["name"]
    out["status"] = {
        "nodeName": node_name or name,
        "providerID": f"kwok://{name}",
        "conditions": [
            {"type": t, "status": "True", "reason": t}
            for t in ("Launched", "Registered", "Initialized", "Ready")
        ],
    }
    return out


def failed_claim(claim: JSON, reason: str = "LaunchFailed", message: str = "quota") -> JSON:
    out = copy.deepcopy(claim)
    out["status"] = {
        "conditions": [
            {"type": "Launched", "status": "False", "reason": reason, "message": message},
            {"type": "Ready", "status": "False", "reason": "NotLaunched"},
        ]
    }
    return out


def node_for(claim: JSON) -> JSON:
    """The node a provisioner brings up for a claim: the claim's labels, the SKU's GPUs."""
    spec = claim["spec"]
    instance_type = next(
        r["values"][0] for r in spec["requirements"] if r["key"] == LABEL_INSTANCE_TYPE
    )
    labels = dict(claim["metadata"]["labels"])
    from kaito.presets import default_skus

    gpus = default_skus().resolve(instance_type).gpus
    return gpu_node(
        claim["metadata"]["name"], instance_type=instance_type, gpus=gpus, labels=labels
    )


def with_status(obj: JSON | None, **status: Any) -> JSON:
    assert obj is not None, "nothing observed to give a status to"
    out = copy.deepcopy(obj)
    out["status"] = status
    out["metadata"].setdefault("generation", 1)
    return out


def ready_statefulset(sts: JSON) -> JSON:
    replicas = sts["spec"]["replicas"]
    return with_status(
        sts,
        observedGeneration=1,
        replicas=replicas,
        readyReplicas=replicas,
        updatedReplicas=replicas,
    )


def pod(
    name: str,
    workspace: str,
    *,
    ready: bool = True,
    waiting: str | None = None,
    message: str = "",
    terminated: str | None = None,
    unschedulable: bool = False,
) -> JSON:
    container: JSON = {"name": workspace, "ready": ready, "state": {"running": {}}}
    if waiting:
        container["state"] = {"waiting": {"reason": waiting, "message": message}}
    if terminated:
        container["lastState"] = {"terminated": {"reason": terminated, "exitCode": 137}}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL_WORKSPACE: workspace}},
        "status": {
            "conditions": conditions,
            "containerStatuses": [] if unschedulable else [container],
        },
    }


def applied(plan_: Plan, kind: str) -> list[JSON]:
    return [o for o in plan_.apply if o["kind"] == kind]


def one(plan_: Plan, kind: str) -> JSON:
    found = applied(plan_, kind)
    assert len(found) == 1, f"expected one {kind}, planned {[o['kind'] for o in plan_.apply]}"
    return found[0]


def condition(status: JSON | None, type_: str) -> JSON:
    assert status is not None, "the plan left the status unchanged"
    return next(c for c in status["conditions"] if c["type"] == type_)


def after(body: JSON, plan_: Plan) -> JSON:
    """The workspace once the shell wrote the plan's status and annotations."""
    out = copy.deepcopy(body)
    if plan_.status is not None:
        out["status"] = plan_.status
    if plan_.annotations:
        out["metadata"].setdefault("annotations", {}).update(plan_.annotations)
    return out


def converge(
    body: JSON, observed: Observed, options: ClusterOptions = OPTIONS, *, rounds: int = 3
) -> tuple[JSON, Plan]:
    """Plan repeatedly, applying status and annotations, until the body stops changing."""
    current = body
    result = plan(current, observed, options, now=NOW)
    for _ in range(rounds):
        current = after(current, result)
        result = plan(current, observed, options, now=LATER)
    return current, result
