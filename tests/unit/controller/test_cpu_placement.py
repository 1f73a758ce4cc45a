"""CPU presets on GPU-less nodes, operator-wide workload tolerations, plain-HTTP registries."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kaito.api.workspace import parse_workspace
from kaito.manifests.context import WorkspaceContext, resolve
from kaito.manifests.inference import build_statefulset
from kaito.manifests.keys import GPU_RESOURCE
from kaito.manifests.options import ClusterOptions
from kaito.manifests.preflight import build_preflight_job
from kaito.manifests.tuning import build_job
from kaito.reconcile.nodes import qualifies
from kaito.reconcile.planner import plan
from kaito.reconcile.types import Observed
from tests.unit.controller.builders import (
    NOW,
    OPTIONS,
    applied,
    condition,
    gpu_node,
    make_workspace,
    one,
    stored,
)

JSON = dict[str, Any]
SMALL = "smollm2-135m-instruct"
REAL = {"kaito.sh/real-node": "true"}
TAINT_TOLERATION = {
    "key": "kaito.sh/real-node",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}
PLAIN = ClusterOptions(plain_http_registries=("10.245.0.1:5000", "mirror.internal"))
TOLERATING = ClusterOptions(workload_tolerations=(TAINT_TOLERATION,))


def cpu_node(name: str = "real-1", *, labels: dict[str, str] | None = None) -> JSON:
    """A ready kubelet node with no GPU and no instance-type label (a BYO machine)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": dict(REAL if labels is None else labels)},
        "status": {
            "capacity": {"cpu": "2", "memory": "4Gi"},
            "allocatable": {"cpu": "2", "memory": "4Gi"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def small_inference(instance_type: str | None = None) -> JSON:
    builder = make_workspace("small").inference(SMALL).match_labels(**REAL)
    return stored(builder.instance_type(instance_type).obj())


def small_tuning() -> JSON:
    body = make_workspace("tune-small").tuning(SMALL, "lora").match_labels(**REAL)
    body = body.instance_type(None).obj()
    body["tuning"]["input"] = {"urls": ["https://example.com/data.parquet"]}
    body["tuning"]["output"] = {
        "image": "10.245.0.1:5000/adapters/small:1",
        "imagePushSecret": "push",
    }
    return stored(body)


def ctx_of(body: JSON, options: ClusterOptions = OPTIONS) -> WorkspaceContext:
    return resolve(parse_workspace(body), options)


def pod_spec(workload: JSON) -> JSON:
    spec: JSON = workload["spec"]["template"]["spec"]
    return spec


def containers(spec: JSON) -> list[JSON]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_value(c: JSON, name: str) -> str | None:
    return next((e.get("value") for e in c.get("env", []) if e["name"] == name), None)


# --- CPU placement ------------------------------------------------------------------------


def test_a_gpu_less_ready_node_qualifies_only_for_a_workload_on_cpu() -> None:
    node = cpu_node()
    assert qualifies(node, "", [], on_cpu=True)
    assert not qualifies(node, "", [])
    unready = cpu_node()
    unready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    assert not qualifies(unready, "", [], on_cpu=True)


def test_a_cpu_preset_without_a_gpu_instance_type_is_placed_on_cpu() -> None:
    assert ctx_of(small_inference()).on_cpu
    assert ctx_of(small_inference("Standard_D4s_v3")).on_cpu
    # A GPU instance type asks for GPU nodes, whatever the preset.
    assert not ctx_of(small_inference("Standard_NC24ads_A100_v4")).on_cpu


def test_a_gpu_preset_is_never_placed_on_cpu() -> None:
    body = stored(make_workspace("big").inference().match_labels(**REAL).instance_type(None).obj())
    assert not ctx_of(body).on_cpu


def test_a_byo_cpu_node_serves_a_cpu_preset_without_nodeclaims() -> None:
    result = plan(small_inference(), Observed(nodes=(cpu_node(),)), OPTIONS, now=NOW)
    assert result.error is None
    assert not applied(result, "NodeClaim")
    assert condition(result.status, "ResourceReady")["status"] == "True"
    assert condition(result.status, "NodesReady")["status"] == "True"
    assert result.status is not None and result.status["workerNodes"] == ["real-1"]
    server = pod_spec(one(result, "StatefulSet"))["containers"][0]
    assert "--engine=llamacpp" in server["args"]
    resources = server["resources"]
    assert GPU_RESOURCE not in resources.get("requests", {})
    assert GPU_RESOURCE not in resources.get("limits", {})
    assert resources["requests"]["cpu"] == "250m"
    assert "cpu" not in resources.get("limits", {})  # no CPU limit: llama.cpp uses idle CPU


def test_a_cpu_node_without_the_selector_label_does_not_count() -> None:
    other = cpu_node(labels={"kaito.sh/real-node": "false"})
    result = plan(small_inference(), Observed(nodes=(other,)), OPTIONS, now=NOW)
    assert len(applied(result, "NodeClaim")) == 1
    assert condition(result.status, "ResourceReady")["status"] == "False"


def test_a_cpu_preset_on_a_gpu_instance_type_still_needs_gpu_nodes() -> None:
    body = small_inference("Standard_NC24ads_A100_v4")
    result = plan(body, Observed(nodes=(cpu_node(),)), OPTIONS, now=NOW)
    assert len(applied(result, "NodeClaim")) == 1


def test_gpu_presets_keep_requesting_gpus_and_skip_gpu_less_nodes() -> None:
    body = stored(make_workspace("big").inference().match_labels(**REAL).obj())
    gpu = gpu_node("gpu-1", labels=REAL)
    result = plan(body, Observed(nodes=(cpu_node(), gpu)), OPTIONS, now=NOW)
    assert result.status is not None and result.status["workerNodes"] == ["gpu-1"]
    resources = pod_spec(one(result, "StatefulSet"))["containers"][0]["resources"]
    assert resources == {"requests": {GPU_RESOURCE: "1"}, "limits": {GPU_RESOURCE: "1"}}


def test_cpu_memory_requests_grow_with_the_preset() -> None:
    ctx = ctx_of(small_inference())
    assert ctx.preset is not None
    small = build_statefulset(ctx)
    bigger_preset = dataclasses.replace(ctx.preset, weights_gib=1.0)
    bigger = build_statefulset(dataclasses.replace(ctx, preset=bigger_preset))
    # 2 x weights + 512 MiB, rounded up to 64 MiB.
    assert pod_spec(small)["containers"][0]["resources"]["requests"]["memory"] == "1088Mi"
    assert pod_spec(bigger)["containers"][0]["resources"]["requests"]["memory"] == "2560Mi"


def test_a_cpu_preset_tunes_on_a_byo_cpu_node_without_gpus() -> None:
    result = plan(small_tuning(), Observed(nodes=(cpu_node(),)), OPTIONS, now=NOW)
    assert result.error is None
    assert not applied(result, "NodeClaim")
    assert condition(result.status, "ResourceReady")["status"] == "True"
    job = pod_spec(one(result, "Job"))
    for c in containers(job):
        for part in ("requests", "limits"):
            assert GPU_RESOURCE not in c.get("resources", {}).get(part, {}), c["name"]
    tuner = next(c for c in job["initContainers"] if c["name"] == "tune-small")
    assert tuner["resources"]["requests"]["cpu"] == "250m"
    assert tuner["command"] == ["python", "-m", "kaito.runtime.tuning"]


# --- workload tolerations -----------------------------------------------------------------


def test_workload_tolerations_follow_the_builtin_ones_on_inference_and_tuning() -> None:
    serve = pod_spec(build_statefulset(ctx_of(small_inference(), TOLERATING)))
    assert serve["tolerations"][0]["key"] == GPU_RESOURCE
    assert serve["tolerations"][-1] == TAINT_TOLERATION
    tune = pod_spec(build_job(ctx_of(small_tuning(), TOLERATING)))
    assert tune["tolerations"][-1] == TAINT_TOLERATION
    plain = pod_spec(build_statefulset(ctx_of(small_inference())))
    assert TAINT_TOLERATION not in plain["tolerations"]


def test_the_preflight_gets_only_the_workload_tolerations() -> None:
    job = build_preflight_job(ctx_of(small_tuning(), TOLERATING))
    assert pod_spec(job)["tolerations"] == [TAINT_TOLERATION]
    assert "tolerations" not in pod_spec(build_preflight_job(ctx_of(small_tuning())))


def test_custom_templates_get_the_workload_tolerations_after_their_own() -> None:
    own = {"key": "team", "operator": "Exists", "effect": "NoSchedule"}
    template = {"spec": {"containers": [{"name": "c", "image": "x"}], "tolerations": [own]}}
    body = stored(make_workspace("custom").template(template).match_labels(**REAL).obj())
    spec = pod_spec(build_statefulset(ctx_of(body, TOLERATING)))
    assert spec["tolerations"][0] == own
    assert spec["tolerations"][-1] == TAINT_TOLERATION


# --- plain-HTTP registries ----------------------------------------------------------------


def test_every_runtime_container_gets_the_plain_http_registries() -> None:
    # A preset registry makes the pods pull weights too (the weights puller).
    options = dataclasses.replace(PLAIN, preset_registry="10.245.0.1:5000/kaito")
    body = make_workspace("small").inference(SMALL).match_labels(**REAL).instance_type(None)
    serve = pod_spec(build_statefulset(ctx_of(stored(body.adapter("a").obj()), options)))
    tune = pod_spec(build_job(ctx_of(small_tuning(), options)))
    preflight = pod_spec(build_preflight_job(ctx_of(small_tuning(), options)))
    runtime = [*containers(serve), *containers(tune), *containers(preflight)]
    names = {c["name"] for c in runtime}
    server_side = {"small", "puller-a", "tune-small", "pusher", "data-downloader", "preflight"}
    assert server_side <= names
    assert len(containers(serve)) == 3, [c["name"] for c in containers(serve)]  # + weights
    for c in runtime:
        expected = "10.245.0.1:5000,mirror.internal"
        assert env_value(c, "KAITO_PLAIN_HTTP_REGISTRIES") == expected, c["name"]


def test_no_plain_http_list_adds_no_variable_and_user_images_never_get_it() -> None:
    serve = pod_spec(build_statefulset(ctx_of(small_inference())))
    assert all(env_value(c, "KAITO_PLAIN_HTTP_REGISTRIES") is None for c in containers(serve))
    template = {"spec": {"containers": [{"name": "c", "image": "user/image:1"}]}}
    body = stored(make_workspace("custom").template(template).match_labels(**REAL).obj())
    custom = pod_spec(build_statefulset(ctx_of(body, PLAIN)))
    assert env_value(custom["containers"][0], "KAITO_PLAIN_HTTP_REGISTRIES") is None


@pytest.mark.parametrize("option", [TOLERATING, PLAIN])
def test_the_options_leave_a_gpu_presets_requests_alone(option: ClusterOptions) -> None:
    body = stored(make_workspace("big").inference().match_labels(**REAL).obj())
    server = pod_spec(build_statefulset(ctx_of(body, option)))["containers"][0]
    assert server["resources"]["limits"] == {GPU_RESOURCE: "1"}
