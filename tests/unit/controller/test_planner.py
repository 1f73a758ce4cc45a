"""The planner: nodes, workloads, status and idempotence, on plain data."""

from __future__ import annotations

import copy
from typing import Any

from kaito.manifests.keys import ANNOTATION_APPLIED
from kaito.manifests.nodeclaim import nodeclaim_name
from kaito.reconcile.common import NODES_POLL_S
from kaito.reconcile.observed import wanted_config_maps
from kaito.reconcile.planner import plan
from kaito.reconcile.types import Observed
from tests.unit.controller.builders import (
    BYO,
    LATER,
    NOW,
    OPTIONS,
    adding,
    after,
    applied,
    condition,
    converge,
    failed_claim,
    gpu_node,
    inference_workspace,
    legacy_tuning,
    make_workspace,
    multi_gpu_inference,
    node_for,
    one,
    pod,
    ready_claim,
    ready_statefulset,
    stored,
    with_,
    with_status,
)

JSON = dict[str, Any]


def cluster_with_ready_nodes(body: JSON) -> tuple[JSON, Observed]:
    """Plan once, then pretend the provisioner made every planned claim ready."""
    first = plan(body, Observed(), OPTIONS, now=NOW)
    claims = [ready_claim(c) for c in applied(first, "NodeClaim")]
    observed = Observed(
        nodeclaims=tuple(claims),
        nodes=tuple(node_for(c) for c in claims),
        revisions=tuple(applied(first, "ControllerRevision")),
    )
    return after(body, first), observed


def workload_observed(body: JSON, observed: Observed) -> tuple[JSON, Observed, Any]:
    """Plan on ready nodes and observe every applied namespaced object as created."""
    current, result = converge(body, observed)
    sts = next((o for o in result.apply if o["kind"] == "StatefulSet"), None)
    services = tuple(o for o in result.apply if o["kind"] == "Service")
    config_maps = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o["data"]
        for o in result.apply
        if o["kind"] == "ConfigMap"
    }
    job = next((o for o in result.apply if o["kind"] == "Job"), None)
    claim = next((o for o in result.apply if o["kind"] == "PersistentVolumeClaim"), None)
    seen = dataclass_replace(
        observed,
        statefulset=sts,
        results_claim=claim,
        services=services,
        config_maps={**observed.config_maps, **config_maps},
        job=job,
        revisions=(*observed.revisions, *applied(result, "ControllerRevision")),
    )
    return current, seen, result


def dataclass_replace(observed: Observed, **changes: Any) -> Observed:
    import dataclasses

    return dataclasses.replace(observed, **changes)


# --- nodes ------------------------------------------------------------------------------


def test_a_new_tuning_workspace_gets_one_nodeclaim_and_waits_for_it() -> None:
    result = plan(legacy_tuning(), Observed(), OPTIONS, now=NOW)
    claim = one(result, "NodeClaim")
    assert claim["metadata"]["name"] == nodeclaim_name("default", "workspace-tuning-phi-3", 0)
    assert not applied(result, "Job")
    assert condition(result.status, "NodeClaimReady")["reason"] == "NodeClaimNotReady"
    assert condition(result.status, "ResourceReady")["status"] == "False"
    assert result.status is not None and result.status["targetNodeCount"] == 1
    assert [e.reason for e in result.events] == ["NodeClaimCreated"]
    assert result.requeue_after is not None


def test_a_two_node_placement_gets_one_nodeclaim_per_node() -> None:
    result = plan(multi_gpu_inference(), Observed(), OPTIONS, now=NOW)
    names = [c["metadata"]["name"] for c in applied(result, "NodeClaim")]
    assert names == [nodeclaim_name("default", "llama", i) for i in range(2)]
    assert result.status is not None and result.status["targetNodeCount"] == 2


def test_each_nodeclaim_creation_event_is_attached_to_the_claim_it_announces() -> None:
    result = plan(multi_gpu_inference(), Observed(), OPTIONS, now=NOW)
    claims = [("NodeClaim", c["metadata"]["name"]) for c in applied(result, "NodeClaim")]
    announced = [e.subject for e in result.events if e.reason == "NodeClaimCreated"]
    assert len(claims) == 2 and announced == claims


def test_planning_again_after_a_restart_creates_no_duplicate_nodeclaims() -> None:
    body = multi_gpu_inference()
    first = plan(body, Observed(), OPTIONS, now=NOW)
    pending = tuple(applied(first, "NodeClaim"))
    again = plan(after(body, first), Observed(nodeclaims=pending), OPTIONS, now=LATER)
    assert not applied(again, "NodeClaim")


def test_a_restart_before_the_claims_were_observed_plans_the_same_names() -> None:
    body = multi_gpu_inference()
    first = plan(body, Observed(), OPTIONS, now=NOW)
    second = plan(body, Observed(), OPTIONS, now=LATER)
    assert [c["metadata"]["name"] for c in applied(first, "NodeClaim")] == [
        c["metadata"]["name"] for c in applied(second, "NodeClaim")
    ]


def test_a_vanished_nodeclaim_is_replaced_under_the_same_name() -> None:
    body, observed = cluster_with_ready_nodes(multi_gpu_inference())
    lost = nodeclaim_name("default", "llama", 1)
    remaining = tuple(c for c in observed.nodeclaims if c["metadata"]["name"] != lost)
    result = plan(body, dataclass_replace(observed, nodeclaims=remaining), OPTIONS, now=LATER)
    assert [c["metadata"]["name"] for c in applied(result, "NodeClaim")] == [lost]


def test_a_nodeclaim_being_deleted_is_replaced_under_a_new_name() -> None:
    body, observed = cluster_with_ready_nodes(legacy_tuning())
    claim = copy.deepcopy(observed.nodeclaims[0])
    claim["metadata"]["deletionTimestamp"] = NOW
    result = plan(body, Observed(nodeclaims=(claim,)), OPTIONS, now=LATER)
    replacement = one(result, "NodeClaim")["metadata"]["name"]
    assert replacement == nodeclaim_name("default", "workspace-tuning-phi-3", 1)


def test_a_failed_launch_surfaces_in_nodeclaim_ready_and_resource_ready_once() -> None:
    body = legacy_tuning()
    first = plan(body, Observed(), OPTIONS, now=NOW)
    broken = failed_claim(one(first, "NodeClaim"), "InsufficientCapacity", "no V100 quota left")
    result = plan(after(body, first), Observed(nodeclaims=(broken,)), OPTIONS, now=LATER)
    claim_cond = condition(result.status, "NodeClaimReady")
    assert claim_cond["reason"] == "InsufficientCapacity"
    assert "no V100 quota left" in claim_cond["message"]
    assert condition(result.status, "ResourceReady")["reason"] == "InsufficientCapacity"
    assert [e.reason for e in result.events] == ["NodeClaimFailed"]
    repeat = plan(
        after(after(body, first), result), Observed(nodeclaims=(broken,)), OPTIONS, now=LATER
    )
    assert not repeat.events


def test_ready_claims_without_ready_nodes_poll_for_nodes() -> None:
    body, observed = cluster_with_ready_nodes(legacy_tuning())
    result = plan(body, dataclass_replace(observed, nodes=()), OPTIONS, now=LATER)
    assert condition(result.status, "NodeClaimReady")["status"] == "True"
    assert condition(result.status, "NodesReady")["status"] == "False"
    assert result.requeue_after == NODES_POLL_S
    assert not applied(result, "Job")


def test_a_node_of_the_wrong_instance_type_does_not_count() -> None:
    body, observed = cluster_with_ready_nodes(legacy_tuning())
    claim = observed.nodeclaims[0]
    wrong = gpu_node(
        claim["metadata"]["name"],
        instance_type="Standard_NC24ads_A100_v4",
        labels={"app": "tuning-phi-3"},
    )
    result = plan(body, dataclass_replace(observed, nodes=(wrong,)), OPTIONS, now=LATER)
    assert condition(result.status, "NodesReady")["status"] == "False"


def test_a_gpu_less_node_does_not_count() -> None:
    body, observed = cluster_with_ready_nodes(legacy_tuning())
    node = copy.deepcopy(observed.nodes[0])
    node["status"]["capacity"] = {}
    node["status"]["allocatable"] = {}
    result = plan(body, dataclass_replace(observed, nodes=(node,)), OPTIONS, now=LATER)
    assert condition(result.status, "NodesReady")["status"] == "False"


def test_existing_matching_nodes_reduce_the_nodeclaims_needed() -> None:
    byo = gpu_node(
        "byo-1", instance_type="Standard_NC48ads_A100_v4", gpus=2, labels={"app": "llama"}
    )
    result = plan(multi_gpu_inference(), Observed(nodes=(byo,)), OPTIONS, now=NOW)
    assert len(applied(result, "NodeClaim")) == 1


def test_preferred_nodes_count_whatever_their_instance_type() -> None:
    body = adding(multi_gpu_inference(), "resource.preferredNodes", ["big-1", "big-2"])
    nodes = tuple(gpu_node(n, instance_type="Other", gpus=2) for n in ("big-1", "big-2"))
    result = plan(body, Observed(nodes=nodes), OPTIONS, now=NOW)
    assert not applied(result, "NodeClaim")
    assert condition(result.status, "NodesReady")["status"] == "True"


def test_worker_nodes_list_the_ready_nodes_sorted() -> None:
    body, observed = cluster_with_ready_nodes(multi_gpu_inference())
    result = plan(body, observed, OPTIONS, now=LATER)
    assert result.status is not None
    assert result.status["workerNodes"] == sorted(
        c["metadata"]["name"] for c in observed.nodeclaims
    )


def test_nodes_under_pressure_are_named_in_nodes_ready() -> None:
    body, observed = cluster_with_ready_nodes(legacy_tuning())
    node = copy.deepcopy(observed.nodes[0])
    node["status"]["conditions"].append({"type": "DiskPressure", "status": "True"})
    result = plan(body, dataclass_replace(observed, nodes=(node,)), OPTIONS, now=LATER)
    nodes_ready = condition(result.status, "NodesReady")
    assert nodes_ready["status"] == "True"
    assert nodes_ready["message"].endswith(
        f"under resource pressure: {node['metadata']['name']} (DiskPressure)"
    )


def test_existing_nodes_mode_creates_no_nodeclaims_and_drops_the_condition() -> None:
    nodes = tuple(
        gpu_node(
            f"gpu-{i}", instance_type="Standard_NC48ads_A100_v4", gpus=2, labels={"app": "llama"}
        )
        for i in range(2)
    )
    result = plan(multi_gpu_inference(), Observed(nodes=nodes), BYO, now=NOW)
    assert not applied(result, "NodeClaim")
    assert all(c["type"] != "NodeClaimReady" for c in (result.status or {})["conditions"])
    assert condition(result.status, "ResourceReady")["status"] == "True"
    assert one(result, "StatefulSet")["spec"]["replicas"] == 2


def test_existing_nodes_mode_sizes_gpu_requests_from_the_nodes() -> None:
    nodes = (
        gpu_node(
            "g", instance_type="Standard_NC24ads_A100_v4", gpus=4, labels={"app": "serve-phi-3"}
        ),
    )
    result = plan(stored(inference_workspace()), Observed(nodes=nodes), BYO, now=NOW)
    main = one(result, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert main["resources"]["limits"] == {"nvidia.com/gpu": "4"}


def test_existing_nodes_mode_waits_without_matching_nodes() -> None:
    other = gpu_node("g", labels={"app": "someone-else"})
    result = plan(stored(inference_workspace()), Observed(nodes=(other,)), BYO, now=NOW)
    assert [o["kind"] for o in result.apply] == ["ControllerRevision"]
    assert condition(result.status, "NodesReady")["status"] == "False"


def test_the_target_node_count_is_frozen_once_written() -> None:
    body = adding(multi_gpu_inference(), "status", {"targetNodeCount": 1})
    result = plan(body, Observed(), OPTIONS, now=NOW)
    assert len(applied(result, "NodeClaim")) == 1


# --- tuning -----------------------------------------------------------------------------


def test_ready_nodes_start_the_tuning_job_and_copy_the_default_template() -> None:
    body, observed = cluster_with_ready_nodes(legacy_tuning())
    result = plan(body, observed, OPTIONS, now=LATER)
    job = one(result, "Job")
    assert job["metadata"]["name"] == "workspace-tuning-phi-3"
    template = one(result, "ConfigMap")
    assert template["metadata"] == {
        "name": "qlora-params-template",
        "namespace": "default",
        "labels": {"app.kubernetes.io/managed-by": "kaito"},
        "annotations": template["metadata"]["annotations"],
    }
    assert "load_in_4bit: true" in template["data"]["training_config.yaml"]
    assert condition(result.status, "ResourceReady")["status"] == "True"
    assert condition(result.status, "JobStarted")["reason"] == "WorkspaceTuningJobStatusPending"


def test_the_release_namespace_template_wins_over_the_packaged_one() -> None:
    body, observed = cluster_with_ready_nodes(legacy_tuning())
    custom = {
        "training_config.yaml": "training_config:\n  TrainingArguments:\n    output_dir: out\n"
    }
    observed = dataclass_replace(
        observed, config_maps={("kaito-system", "qlora-params-template"): custom}
    )
    result = plan(body, observed, OPTIONS, now=LATER)
    assert one(result, "ConfigMap")["data"] == custom
    tuner = one(result, "Job")["spec"]["template"]["spec"]["initContainers"][1]
    assert "--output-dir=/mnt/out" in tuner["args"]


def test_an_existing_copy_of_the_template_is_left_alone() -> None:
    body, observed = cluster_with_ready_nodes(legacy_tuning())
    existing = {"training_config.yaml": "training_config: {}\n"}
    observed = dataclass_replace(
        observed, config_maps={("default", "qlora-params-template"): existing}
    )
    assert not applied(plan(body, observed, OPTIONS, now=LATER), "ConfigMap")


def test_a_missing_user_training_config_is_reported_and_retried() -> None:
    body = stored(make_workspace("tune-phi-3").tuning().tuning_config("my-config").obj())
    body, observed = cluster_with_ready_nodes(body)
    result = plan(body, observed, OPTIONS, now=LATER)
    assert not applied(result, "Job")
    assert condition(result.status, "JobStarted")["reason"] == "ConfigMapNotFound"
    assert result.requeue_after is not None


def test_a_running_job_turns_job_started_true_and_state_running() -> None:
    body, observed, _result = workload_observed(*cluster_with_ready_nodes(legacy_tuning()))
    running = dataclass_replace(observed, job=with_status(observed.job, active=1))
    status = plan(body, running, OPTIONS, now=LATER).status
    assert condition(status, "JobStarted")["status"] == "True"
    assert condition(status, "WorkspaceSucceeded")["reason"] == "workspacePending"
    assert status is not None and status["state"] == "Running"


def test_a_completed_job_succeeds_the_workspace_and_then_nothing_is_written() -> None:
    body, observed, _ = workload_observed(*cluster_with_ready_nodes(legacy_tuning()))
    done = dataclass_replace(
        observed,
        job=with_status(
            observed.job, succeeded=1, conditions=[{"type": "Complete", "status": "True"}]
        ),
    )
    current, final = converge(body, done)
    assert condition(current["status"], "JobStarted")["status"] == "True"
    assert condition(current["status"], "WorkspaceSucceeded")["reason"] == "workspaceSucceeded"
    assert current["status"]["state"] == "Succeeded"
    assert final.idle
    assert final.requeue_after is None


def test_a_failed_job_fails_the_workspace_with_the_jobs_message() -> None:
    body, observed, _ = workload_observed(*cluster_with_ready_nodes(legacy_tuning()))
    failed = dataclass_replace(
        observed,
        job=with_status(
            observed.job,
            failed=3,
            conditions=[
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ],
        ),
    )
    status = plan(body, failed, OPTIONS, now=LATER).status
    assert condition(status, "JobStarted")["reason"] == "WorkspaceTuningJobStatusFailed"
    assert "backoff limit" in condition(status, "WorkspaceSucceeded")["message"]
    assert condition(status, "WorkspaceSucceeded")["reason"] == "workspaceFailed"
    assert status is not None and status["state"] == "Failed"


def test_a_tuning_pod_that_cannot_pull_its_image_is_reported() -> None:
    body, observed, _ = workload_observed(*cluster_with_ready_nodes(legacy_tuning()))
    stuck = dataclass_replace(
        observed,
        job=with_status(observed.job, active=1),
        pods=(
            pod(
                "t-1",
                "workspace-tuning-phi-3",
                ready=False,
                waiting="ImagePullBackOff",
                message="pull access denied",
            ),
        ),
    )
    status = plan(body, stuck, OPTIONS, now=LATER).status
    assert condition(status, "WorkspaceSucceeded")["reason"] == "ImagePullError"
    assert "pull access denied" in condition(status, "WorkspaceSucceeded")["message"]


def test_a_changed_tuning_spec_replaces_the_job_in_the_foreground() -> None:
    body, observed, _ = workload_observed(*cluster_with_ready_nodes(legacy_tuning()))
    changed = with_(body, "tuning.input.urls", ["https://example.com/other.parquet"])
    result = plan(changed, observed, OPTIONS, now=LATER)
    assert result.annotations["workspace.kaito.io/revision"] == "2"
    assert [(d.kind, d.propagation) for d in result.delete] == [("Job", "Foreground")]
    assert [e.reason for e in result.events] == ["WorkloadRollout"]
    gone = plan(after(changed, result), dataclass_replace(observed, job=None), OPTIONS, now=LATER)
    assert one(gone, "Job")["metadata"]["annotations"]["workspace.kaito.io/revision"] == "2"


# --- inference --------------------------------------------------------------------------


def test_ready_nodes_bring_the_statefulset_services_and_config_map() -> None:
    body, observed = cluster_with_ready_nodes(multi_gpu_inference())
    result = plan(body, observed, OPTIONS, now=LATER)
    kinds = sorted(o["kind"] for o in result.apply)
    assert kinds == ["ConfigMap", "Service", "Service", "StatefulSet"]
    assert condition(result.status, "InferenceReady")["reason"] == "WorkspaceInferenceStatusPending"


def test_inference_waits_for_resources_before_creating_the_workload() -> None:
    result = plan(multi_gpu_inference(), Observed(), OPTIONS, now=NOW)
    assert {o["kind"] for o in result.apply} == {"ControllerRevision", "NodeClaim"}


def serving(body: JSON) -> tuple[JSON, Observed]:
    current, observed, _ = workload_observed(*cluster_with_ready_nodes(body))
    sts = observed.statefulset
    assert sts is not None
    name = sts["metadata"]["name"]
    pods = tuple(pod(f"{name}-{i}", name) for i in range(sts["spec"]["replicas"]))
    return current, dataclass_replace(observed, statefulset=ready_statefulset(sts), pods=pods)


def test_ready_pods_make_inference_ready_and_the_workspace_succeed() -> None:
    body, observed = serving(multi_gpu_inference())
    current, _final = converge(body, observed)
    status = current["status"]
    assert condition(status, "InferenceReady")["reason"] == "WorkspaceInferenceStatusSuccess"
    assert condition(status, "WorkspaceSucceeded")["status"] == "True"
    assert condition(status, "ResourceReady")["status"] == "True"
    assert status["state"] == "Ready"
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])


def test_an_unchanged_ready_workspace_causes_no_writes() -> None:
    body, observed = serving(multi_gpu_inference())
    _, final = converge(body, observed)
    assert final.idle
    assert final.status is None


def test_a_crash_looping_pod_turns_inference_ready_false_with_its_reason() -> None:
    body, observed = serving(multi_gpu_inference())
    current, _ = converge(body, observed)
    crashing = (
        pod("llama-0", "llama"),
        pod(
            "llama-1",
            "llama",
            ready=False,
            waiting="CrashLoopBackOff",
            message="back-off 40s restarting failed container",
            terminated="Error",
        ),
    )
    result = plan(current, dataclass_replace(observed, pods=crashing), OPTIONS, now=LATER)
    inference = condition(result.status, "InferenceReady")
    assert (inference["status"], inference["reason"]) == ("False", "ContainerCrashLoopBackOff")
    assert "llama-1" in inference["message"] and "back-off" in inference["message"]
    assert result.status is not None and result.status["state"] == "NotReady"


def test_a_not_ready_pod_is_never_reported_as_serving_even_if_the_statefulset_lags() -> None:
    body, observed = serving(multi_gpu_inference())
    current, _ = converge(body, observed)
    pods = (pod("llama-0", "llama"), pod("llama-1", "llama", ready=False))
    result = plan(current, dataclass_replace(observed, pods=pods), OPTIONS, now=LATER)
    assert condition(result.status, "InferenceReady")["status"] == "False"


def test_pod_problems_are_ranked_oom_first() -> None:
    body, observed = serving(multi_gpu_inference())
    pods = (
        pod("llama-0", "llama", ready=False, unschedulable=True),
        pod("llama-1", "llama", ready=False, waiting="CrashLoopBackOff", terminated="OOMKilled"),
    )
    result = plan(body, dataclass_replace(observed, pods=pods), OPTIONS, now=LATER)
    assert condition(result.status, "InferenceReady")["reason"] == "ContainerOOMKilled"


def test_an_unschedulable_pod_is_reported_with_the_schedulers_message() -> None:
    body, observed = serving(multi_gpu_inference())
    pods = (pod("llama-0", "llama", ready=False, unschedulable=True),)
    result = plan(body, dataclass_replace(observed, pods=pods), OPTIONS, now=LATER)
    inference = condition(result.status, "InferenceReady")
    assert inference["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in inference["message"]


def test_lost_nodes_make_inference_not_ready_but_keep_the_workload() -> None:
    body, observed = serving(multi_gpu_inference())
    current, _ = converge(body, observed)
    result = plan(
        current, dataclass_replace(observed, nodes=observed.nodes[:1]), OPTIONS, now=LATER
    )
    assert condition(result.status, "InferenceReady")["status"] == "False"
    assert not result.delete


def test_a_changed_inference_spec_rolls_the_statefulset() -> None:
    body, observed = serving(stored(inference_workspace()))
    current, _ = converge(body, observed)
    changed = adding(
        current,
        "inference.adapters",
        [{"source": {"name": "a1", "image": "registry.example.com/a1:1"}}],
    )
    result = plan(changed, observed, OPTIONS, now=LATER)
    sts = one(result, "StatefulSet")
    assert sts["metadata"]["annotations"]["workspace.kaito.io/revision"] == "2"
    assert (
        sts["metadata"]["annotations"][ANNOTATION_APPLIED]
        != (
            observed.statefulset["metadata"]["annotations"][ANNOTATION_APPLIED]  # type: ignore[index]
        )
    )
    assert [e.reason for e in result.events] == ["WorkloadRollout"]
    assert condition(result.status, "InferenceReady")["status"] == "False"


def test_a_metadata_only_change_keeps_the_revision() -> None:
    body, observed = serving(stored(inference_workspace()))
    current, _ = converge(body, observed)
    relabelled = adding(current, "metadata.labels", {"team": "a"})
    assert plan(relabelled, observed, OPTIONS, now=LATER).annotations == {}


def test_user_config_max_model_len_feeds_the_estimator() -> None:
    # phi-3-mini on a 16 GiB V100 fits with the default context; 32768 tokens of KV cache do not.
    short = stored(
        inference_workspace(
            name="phi", preset="phi-3-mini-128k-instruct", instance_type="Standard_NC6s_v3"
        )
    )
    body = adding(short, "inference.config", "long")
    config = {"inference_config.yaml": "vllm:\n  max-model-len: 32768\n"}
    result = plan(body, Observed(config_maps={("default", "long"): config}), OPTIONS, now=NOW)
    default = plan(short, Observed(), OPTIONS, now=NOW)
    assert len(applied(default, "NodeClaim")) == 1
    assert not applied(result, "NodeClaim")
    assert "max-model-len" in condition(result.status, "WorkspaceSucceeded")["message"]


# --- revisions ----------------------------------------------------------------------------


def test_a_new_spec_gets_controller_revision_1_with_its_hash() -> None:
    result = plan(legacy_tuning(), Observed(), OPTIONS, now=NOW)
    revision = one(result, "ControllerRevision")
    digest = result.annotations["workspace.kaito.io/hash"]
    assert revision["metadata"]["name"] == f"workspace-tuning-phi-3-{digest[:5]}"
    assert revision["revision"] == 1
    assert revision["metadata"]["labels"] == {"workspace.kaito.io/name": "workspace-tuning-phi-3"}
    assert revision["metadata"]["annotations"] == {"workspace.kaito.io/hash": digest}
    assert revision["data"]["tuning"]["method"] == "qlora"
    assert result.annotations["workspace.kaito.io/revision"] == "1"


def revised(body: JSON, observed: Observed, path: str, value: Any) -> tuple[JSON, Observed, Any]:
    """The body after a user changed `path` to `value` (added when it was not set yet)."""
    try:
        changed = with_(body, path, value)
    except KeyError:
        changed = adding(body, path, value)
    result = plan(changed, observed, OPTIONS, now=LATER)
    seen = dataclass_replace(
        observed, revisions=(*observed.revisions, *applied(result, "ControllerRevision"))
    )
    return after(changed, result), seen, result


def test_a_reverted_spec_reuses_its_revision_number() -> None:
    body, observed = cluster_with_ready_nodes(stored(inference_workspace()))
    body, observed, second = revised(body, observed, "resource.count", 2)
    assert second.annotations["workspace.kaito.io/revision"] == "2"
    body, observed, back = revised(body, observed, "resource.count", 1)
    assert back.annotations["workspace.kaito.io/revision"] == "1"
    assert not applied(back, "ControllerRevision")


def test_only_the_ten_newest_revisions_are_kept() -> None:
    body, observed = cluster_with_ready_nodes(stored(inference_workspace()))
    for index in range(2, 12):  # ten spec changes (a selector: no node limit in the way)
        path = "resource.labelSelector.matchLabels.app"
        body, observed, result = revised(body, observed, path, f"app-{index}")
    assert result.annotations["workspace.kaito.io/revision"] == "11"
    deleted = [d for d in result.delete if d.kind == "ControllerRevision"]
    oldest = min(observed.revisions, key=lambda r: r["revision"])
    assert [d.name for d in deleted] == [oldest["metadata"]["name"]]


# --- errors, deletion, status bookkeeping ----------------------------------------------


def test_an_unknown_preset_fails_the_workspace_permanently() -> None:
    body = stored(inference_workspace(preset="no-such-model"))
    result = plan(body, Observed(), OPTIONS, now=NOW)
    assert result.error is not None and result.error.reason == "PresetNotFound"
    assert condition(result.status, "WorkspaceSucceeded")["reason"] == "PresetNotFound"
    assert result.status is not None and result.status["state"] == "Failed"
    assert not result.apply


def test_a_malformed_body_is_reported_not_raised() -> None:
    body = adding(stored(inference_workspace()), "resource.count", "two")
    result = plan(body, Observed(), OPTIONS, now=NOW)
    assert result.error is not None and result.error.reason == "InvalidWorkspaceSpec"
    assert "resource.count" in result.error.message


def test_deletion_deletes_the_nodeclaims_and_reports_only_deleting() -> None:
    body, observed = cluster_with_ready_nodes(multi_gpu_inference())
    body = adding(body, "metadata.deletionTimestamp", LATER)
    result = plan(body, observed, OPTIONS, now=LATER)
    assert sorted(d.name for d in result.delete) == sorted(
        c["metadata"]["name"] for c in observed.nodeclaims
    )
    assert {d.kind for d in result.delete} == {"NodeClaim"}
    assert [c["type"] for c in (result.status or {})["conditions"]] == ["WorkspaceDeleting"]
    assert not result.apply


def test_conditions_keep_their_transition_time_while_their_status_holds() -> None:
    body = legacy_tuning()
    first = plan(body, Observed(), OPTIONS, now=NOW)
    claim = one(first, "NodeClaim")
    unchanged = plan(after(body, first), Observed(nodeclaims=(claim,)), OPTIONS, now=LATER)
    assert unchanged.status is None  # nothing changed: no status write at all
    # The claim turns ready before its node joins: one condition flips, the others hold.
    launched = Observed(nodeclaims=(ready_claim(claim),))
    second = plan(after(body, first), launched, OPTIONS, now=LATER)
    assert condition(second.status, "NodeClaimReady")["lastTransitionTime"] == LATER
    assert condition(second.status, "NodesReady")["lastTransitionTime"] == NOW
    resource = condition(second.status, "ResourceReady")
    assert (resource["status"], resource["reason"]) == ("False", "NodeNotReady")
    assert resource["lastTransitionTime"] == NOW  # a new reason under the same status


def test_conditions_carry_the_current_generation() -> None:
    body = legacy_tuning()
    first = plan(body, Observed(), OPTIONS, now=NOW)
    bumped = with_(after(body, first), "metadata.generation", 2)
    second = plan(
        bumped, Observed(nodeclaims=tuple(applied(first, "NodeClaim"))), OPTIONS, now=LATER
    )
    assert all(c["observedGeneration"] == 2 for c in (second.status or {})["conditions"])


def test_the_planner_reads_the_config_maps_it_needs() -> None:
    from kaito.api.workspace import parse_workspace

    tuning = parse_workspace(legacy_tuning())
    assert wanted_config_maps(tuning, OPTIONS) == [
        ("default", "qlora-params-template"),
        ("kaito-system", "qlora-params-template"),
    ]
    serving_ws = parse_workspace(stored(inference_workspace()))
    assert wanted_config_maps(serving_ws, OPTIONS) == [("default", "serve-phi-3-inference-config")]
