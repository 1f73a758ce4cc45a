"""Manifest builders: NodeClaims, the inference StatefulSet and Services, the tuning Job."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kaito.api.workspace import parse_workspace
from kaito.manifests.context import WorkspaceContext, resolve, spec_hash
from kaito.manifests.errors import SpecError
from kaito.manifests.inference import (
    build_inference_config_map,
    build_services,
    build_statefulset,
    inference_flags,
    render_flags,
)
from kaito.manifests.keys import ANNOTATION_APPLIED, LABEL_WORKSPACE
from kaito.manifests.nodeclaim import build_nodeclaim, nodeclaim_name
from kaito.manifests.options import ClusterOptions
from kaito.manifests.tuning import build_job, training_output_dir
from tests.unit.api.builders import make_workspace
from tests.unit.controller.builders import (
    OPTIONS,
    inference_workspace,
    legacy_tuning,
    multi_gpu_inference,
    stored,
    tuning_workspace,
    with_,
)

JSON = dict[str, Any]
SERVE = "serve-phi-3"
ANNOTATION_IMAGE_FAMILY = "kaito.sh/node-image-family"


def ctx_of(body: JSON, options: ClusterOptions = OPTIONS, **kwargs: Any) -> WorkspaceContext:
    return resolve(
        parse_workspace(stored(body) if "uid" not in body["metadata"] else body), options, **kwargs
    )


def container(pod_spec: JSON, name: str) -> JSON:
    everything = [*pod_spec.get("initContainers", []), *pod_spec["containers"]]
    return next(c for c in everything if c["name"] == name)


def env_of(c: JSON) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


# --- NodeClaims -------------------------------------------------------------------------


def test_nodeclaim_names_keep_upstreams_shape_and_are_reproducible() -> None:
    name = nodeclaim_name("default", "ws1", 0)
    assert re.fullmatch(r"ws[0-9a-f]{9}", name)
    assert name == nodeclaim_name("default", "ws1", 0)


def test_nodeclaim_names_differ_by_index_namespace_and_name() -> None:
    names = {
        nodeclaim_name("default", "ws1", 0),
        nodeclaim_name("default", "ws1", 1),
        nodeclaim_name("other", "ws1", 0),
        nodeclaim_name("default", "ws2", 0),
    }
    assert len(names) == 4


def test_the_legacy_tuning_nodeclaim_has_upstreams_labels_annotations_and_taint() -> None:
    claim = build_nodeclaim(ctx_of(legacy_tuning()), 0)
    meta = claim["metadata"]
    assert claim["apiVersion"] == "karpenter.sh/v1"
    assert "namespace" not in meta
    assert meta["labels"] == {
        "karpenter.sh/nodepool": "kaito",
        "kaito.sh/workspace": "workspace-tuning-phi-3",
        "kaito.sh/workspacenamespace": "default",
        "app": "tuning-phi-3",
    }
    assert meta["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert meta["annotations"]["kaito.sh/node-image-family"] == "ubuntu"
    assert claim["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]
    assert claim["spec"]["nodeClassRef"] == {
        "group": "kaito.sh",
        "kind": "KaitoNodeClass",
        "name": "default",
    }


def test_azure_nodeclaims_require_the_instance_type_twice_and_linux() -> None:
    requirements = build_nodeclaim(ctx_of(legacy_tuning()), 0)["spec"]["requirements"]
    assert requirements == [
        {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["kaito"]},
        {
            "key": "node.kubernetes.io/instance-type",
            "operator": "In",
            "values": ["Standard_NC6s_v3"],
        },
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
        {"key": "karpenter.azure.com/sku-name", "operator": "In", "values": ["Standard_NC6s_v3"]},
    ]


def test_aws_nodeclaims_ask_for_gpus_and_an_ec2_node_class() -> None:
    body = inference_workspace(instance_type="g5.12xlarge")
    claim = build_nodeclaim(ctx_of(body, ClusterOptions(cloud_provider="aws")), 0)
    assert {"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "Gt", "values": ["0"]} in (
        claim["spec"]["requirements"]
    )
    assert claim["spec"]["nodeClassRef"]["kind"] == "EC2NodeClass"


def test_tuning_nodeclaims_request_1024gi_and_inference_the_preset_disk() -> None:
    tuning = build_nodeclaim(ctx_of(legacy_tuning()), 0)
    serving = build_nodeclaim(ctx_of(inference_workspace()), 0)
    assert tuning["spec"]["resources"]["requests"]["storage"] == "1024Gi"
    assert serving["spec"]["resources"]["requests"]["storage"].endswith("Gi")
    assert serving["spec"]["resources"]["requests"]["storage"] != "1024Gi"


def test_the_workspace_image_family_annotation_wins_over_the_default() -> None:
    body = make_workspace(SERVE).inference().annotation(ANNOTATION_IMAGE_FAMILY, "AzureLinux ")
    body = body.obj()
    claim = build_nodeclaim(ctx_of(body), 0)
    assert claim["metadata"]["annotations"]["kaito.sh/node-image-family"] == "azurelinux"


def test_reserved_keys_never_reach_nodeclaim_labels() -> None:
    body = with_(
        inference_workspace(),
        "resource.labelSelector.matchLabels",
        {"app": "x", "kaito.sh/workspace": "spoof"},
    )
    claim = build_nodeclaim(ctx_of(body), 0)
    assert claim["metadata"]["labels"]["kaito.sh/workspace"] == "serve-phi-3"


def test_every_built_object_records_the_hash_of_its_content() -> None:
    ctx = ctx_of(inference_workspace())
    first = build_statefulset(ctx)
    again = build_statefulset(ctx)
    assert (
        first["metadata"]["annotations"][ANNOTATION_APPLIED]
        == (again["metadata"]["annotations"][ANNOTATION_APPLIED])
    )


# --- context ----------------------------------------------------------------------------


def test_the_spec_hash_ignores_metadata_and_status_but_not_the_spec() -> None:
    body = stored(inference_workspace())
    ws = parse_workspace(body)
    relabelled = parse_workspace(stored(make_workspace(SERVE).inference().label("team", "a").obj()))
    other = parse_workspace(with_(body, "inference.preset.name", "phi-4"))
    assert spec_hash(ws) == spec_hash(relabelled)
    assert spec_hash(ws) != spec_hash(other)


def test_an_unknown_preset_is_a_permanent_error_with_a_suggestion() -> None:
    with pytest.raises(SpecError) as caught:
        ctx_of(inference_workspace(preset="phi-3-mini-4k-instruc"))
    assert caught.value.reason == "PresetNotFound"
    assert "phi-3-mini-4k-instruct" in caught.value.message


def test_tuning_a_preset_without_tuning_support_is_a_permanent_error() -> None:
    with pytest.raises(SpecError) as caught:
        ctx_of(tuning_workspace(preset="llama-3.3-70b-instruct"))
    assert caught.value.reason == "PresetNotTunable"


def single_node_vllm() -> JSON:
    """llama-3.3-70b on one 8-GPU A100 node: the estimator asks for 5 GPUs, so one node."""
    return inference_workspace(
        name="llama", preset="llama-3.3-70b-instruct", instance_type="Standard_ND96asr_A100_v4"
    )


def test_vllm_inference_takes_its_node_count_from_the_estimator() -> None:
    ctx = ctx_of(single_node_vllm())
    assert ctx.runtime == "vllm"
    assert ctx.target_node_count == 1
    assert ctx.gpus_per_node == 8


def test_vllm_needing_several_nodes_is_refused() -> None:
    body = with_(single_node_vllm(), "resource.instanceType", "Standard_NC48ads_A100_v4")
    with pytest.raises(SpecError) as raised:
        ctx_of(body)
    assert raised.value.reason == "MultiNodeUnsupported"
    assert "2 nodes of Standard_NC48ads_A100_v4" in raised.value.message


def test_transformers_inference_takes_resource_count() -> None:
    body = make_workspace(SERVE).inference().runtime("transformers").count(3).obj()
    ctx = ctx_of(body)
    assert (ctx.runtime, ctx.target_node_count) == ("transformers", 3)


def test_a_frozen_target_node_count_is_kept() -> None:
    assert ctx_of(multi_gpu_inference(), target_nodes=5).target_node_count == 5


def test_tuning_on_an_unknown_sku_uses_one_gpu() -> None:
    ctx = ctx_of(tuning_workspace(instance_type="Standard_NX_unknown"))
    assert ctx.gpus_per_node == 1 and not ctx.sku.known


# --- inference --------------------------------------------------------------------------


def test_the_statefulset_runs_one_pod_per_node_behind_the_headless_service() -> None:
    sts = build_statefulset(ctx_of(multi_gpu_inference()))
    spec = sts["spec"]
    assert sts["metadata"]["name"] == "llama"
    assert sts["metadata"]["annotations"]["workspace.kaito.io/revision"] == "1"
    assert sts["metadata"]["ownerReferences"][0]["kind"] == "Workspace"
    assert sts["metadata"]["ownerReferences"][0]["controller"] is True
    assert spec["replicas"] == 2
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "llama-headless"
    assert spec["selector"]["matchLabels"] == {LABEL_WORKSPACE: "llama"}
    assert spec["template"]["metadata"]["labels"] == {LABEL_WORKSPACE: "llama"}


def test_the_server_requests_every_gpu_of_its_sku() -> None:
    pod = build_statefulset(ctx_of(multi_gpu_inference()))["spec"]["template"]["spec"]
    resources = container(pod, "llama")["resources"]
    assert resources == {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}


def test_pods_tolerate_gpu_and_sku_taints_and_azure_spot() -> None:
    pod = build_statefulset(ctx_of(inference_workspace()))["spec"]["template"]["spec"]
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["nvidia.com/gpu", "sku", "kubernetes.azure.com/scalesetpriority"]


def test_pods_require_nodes_with_the_selector_labels() -> None:
    pod = build_statefulset(ctx_of(inference_workspace()))["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["serve-phi-3"]}]}
    ]


def test_a_selector_of_only_reserved_keys_gives_no_affinity() -> None:
    body = with_(
        inference_workspace(), "resource.labelSelector.matchLabels", {"kaito.sh/workspace": "x"}
    )
    pod = build_statefulset(ctx_of(body))["spec"]["template"]["spec"]
    assert "affinity" not in pod


def test_probes_check_health_on_port_5000() -> None:
    main = container(
        build_statefulset(ctx_of(inference_workspace()))["spec"]["template"]["spec"], "serve-phi-3"
    )
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"]["path"] == "/health"
        assert main[probe]["httpGet"]["port"] == 5000
    startup = main["startupProbe"]
    # 30 minutes at least to load, noticed within 2 s once it has.
    assert startup["periodSeconds"] == 2
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 30 * 60
    # Readiness waits for the startup probe only, not a further fixed delay.
    assert main["readinessProbe"]["initialDelaySeconds"] == 0
    assert main["ports"] == [{"name": "http", "containerPort": 5000, "protocol": "TCP"}]


def test_vllm_runs_the_kaito_server_with_the_vllm_engine_and_sorted_flags() -> None:
    main = container(
        build_statefulset(ctx_of(single_node_vllm()))["spec"]["template"]["spec"], "llama"
    )
    assert main["command"] == ["python", "-m", "kaito.runtime.inference"]
    args = main["args"]
    assert args == sorted(args)
    assert "--engine=vllm" in args
    assert "--port=5000" in args
    assert "--served-model-name=llama-3.3-70b-instruct" in args
    assert "--tensor-parallel-size=8" in args
    assert not [a for a in args if a.startswith(("--pipeline-parallel", "--distributed-exec"))]
    assert "--config=/mnt/config/inference_config.yaml" in args
    assert "--gpu-memory-utilization=0.84" in args


def test_vllm_on_a10_leaves_more_memory_headroom() -> None:
    flags = inference_flags(ctx_of(inference_workspace(instance_type="Standard_NV36ads_A10_v5")))
    assert flags["gpu-memory-utilization"] == "0.82"


def test_transformers_gets_the_presets_transformers_args() -> None:
    body = make_workspace(SERVE).inference().runtime("transformers").obj()
    flags = inference_flags(ctx_of(body))
    assert flags["engine"] == "transformers"
    assert flags["torch_dtype"] == "auto"
    assert "tensor-parallel-size" not in flags


def test_flags_render_bare_for_empty_values() -> None:
    assert render_flags({"b": "", "a": "1"}) == ["--a=1", "--b"]


def test_vllm_pods_disable_flashinfer_sampling_and_read_the_hf_token_secret() -> None:
    body = make_workspace(SERVE).inference().model_access_secret("hf").obj()
    main = container(build_statefulset(ctx_of(body))["spec"]["template"]["spec"], "serve-phi-3")
    env = env_of(main)
    assert env["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN", "optional": True}}


def test_image_adapters_get_a_puller_init_container_and_a_shared_volume() -> None:
    adapter = {
        "source": {
            "name": "lora-a",
            "image": "registry.example.com/adapters/a:1",
            "imagePullSecrets": ["pull-a"],
        },
        "strength": "0.5",
    }
    body = make_workspace(SERVE).inference().adapter_spec(adapter).obj()
    pod = build_statefulset(ctx_of(body))["spec"]["template"]["spec"]
    puller = container(pod, "puller-lora-a")
    assert puller["args"][:2] == ["registry.example.com/adapters/a:1", "/mnt/adapter/lora-a"]
    main = container(pod, "serve-phi-3")
    assert {"name": "adapter-volume", "mountPath": "/mnt/adapter"} in main["volumeMounts"]
    assert env_of(main)["lora-a"] == "0.5"
    assert "--enable-lora" in main["args"] and "--adapter-dir=/mnt/adapter" in main["args"]
    assert pod["imagePullSecrets"] == [{"name": "pull-a"}]
    secrets = next(
        v for v in pod["volumes"] if v["name"] == "docker-config-lora-a-inference-adapter"
    )
    assert secrets["projected"]["sources"][0]["secret"]["name"] == "pull-a"


def test_volume_adapters_are_mounted_without_an_init_container() -> None:
    adapter = {
        "source": {
            "name": "lora-b",
            "volumeSource": {"persistentVolumeClaim": {"claimName": "pvc"}},
        }
    }
    body = make_workspace(SERVE).inference().adapter_spec(adapter).obj()
    pod = build_statefulset(ctx_of(body))["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    volume = next(v for v in pod["volumes"] if v["name"] == "adapter-volume-lora-b")
    assert volume["persistentVolumeClaim"] == {"claimName": "pvc"}
    main = container(pod, "serve-phi-3")
    assert {"name": "adapter-volume-lora-b", "mountPath": "/mnt/adapter/lora-b"} in main[
        "volumeMounts"
    ]
    assert "lora-b" not in env_of(main)


def test_services_expose_port_80_on_the_leader_and_a_headless_service() -> None:
    main, headless = build_services(ctx_of(inference_workspace()))
    assert main["metadata"]["name"] == "serve-phi-3"
    assert main["spec"]["type"] == "ClusterIP"
    assert main["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 5000, "protocol": "TCP"}
    ]
    assert main["spec"]["selector"] == {
        LABEL_WORKSPACE: "serve-phi-3",
        "statefulset.kubernetes.io/pod-name": "serve-phi-3-0",
    }
    assert headless["metadata"]["name"] == "serve-phi-3-headless"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True


def test_the_enablelb_annotation_makes_a_load_balancer() -> None:
    body = make_workspace(SERVE).inference().annotation("kaito.sh/enablelb", "True").obj()
    assert build_services(ctx_of(body))[0]["spec"]["type"] == "LoadBalancer"


def test_multi_node_services_expose_only_http() -> None:
    ports = {p["name"] for p in build_services(ctx_of(multi_gpu_inference()))[0]["spec"]["ports"]}
    assert ports == {"http"}


def test_without_a_user_config_the_workspace_gets_its_own_inference_config_map() -> None:
    ctx = ctx_of(inference_workspace())
    config_map = build_inference_config_map(ctx)
    assert config_map is not None
    assert config_map["metadata"]["name"] == "serve-phi-3-inference-config"
    assert "inference_config.yaml" in config_map["data"]
    pod = build_statefulset(ctx)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "config-volume")
    assert volume["configMap"]["name"] == "serve-phi-3-inference-config"


def test_a_user_config_is_mounted_instead_of_the_default() -> None:
    body = make_workspace(SERVE).inference().inference_config("my-config").obj()
    ctx = ctx_of(body)
    assert build_inference_config_map(ctx) is None
    pod = build_statefulset(ctx)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "config-volume")
    assert volume["configMap"]["name"] == "my-config"


def test_a_custom_template_keeps_its_containers_and_gains_labels_and_tolerations() -> None:
    template = {"spec": {"containers": [{"name": "custom", "image": "busybox:1"}]}}
    body = make_workspace(SERVE).template(template).obj()
    sts = build_statefulset(ctx_of(body))
    pod = sts["spec"]["template"]
    assert pod["spec"]["containers"] == [{"name": "custom", "image": "busybox:1"}]
    assert pod["metadata"]["labels"][LABEL_WORKSPACE] == "serve-phi-3"
    assert any(t["key"] == "sku" for t in pod["spec"]["tolerations"])
    assert "serviceName" not in sts["spec"]


# --- tuning -----------------------------------------------------------------------------


def test_the_legacy_tuning_job_downloads_trains_then_pushes() -> None:
    job = build_job(ctx_of(legacy_tuning()))
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == [
        "data-downloader",
        "workspace-tuning-phi-3",
    ]
    assert [c["name"] for c in pod["containers"]] == ["pusher"]
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    assert job["metadata"]["annotations"]["workspace.kaito.io/revision"] == "1"
    assert job["spec"]["template"]["metadata"]["labels"] == {
        LABEL_WORKSPACE: "workspace-tuning-phi-3"
    }


def test_the_downloader_fetches_the_input_urls_into_the_data_volume() -> None:
    pod = build_job(ctx_of(legacy_tuning()))["spec"]["template"]["spec"]
    downloader = container(pod, "data-downloader")
    assert downloader["args"][0].startswith("https://huggingface.co/datasets/")
    assert downloader["volumeMounts"] == [{"name": "data-volume", "mountPath": "/mnt/data"}]


def test_the_tuner_gets_the_skus_gpus_config_and_phi3_target_modules() -> None:
    pod = build_job(ctx_of(legacy_tuning()))["spec"]["template"]["spec"]
    tuner = container(pod, "workspace-tuning-phi-3")
    assert tuner["command"] == ["python", "-m", "kaito.runtime.tuning"]
    assert "--config=/mnt/config/training_config.yaml" in tuner["args"]
    assert tuner["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert env_of(tuner)["DEFAULT_TARGET_MODULES"].startswith("k_proj")
    config = next(v for v in pod["volumes"] if v["name"] == "config-volume")
    assert config["configMap"]["name"] == "qlora-params-template"
    mounts = {m["name"]: m["mountPath"] for m in tuner["volumeMounts"]}
    assert mounts["results-volume"] == "/mnt/results"
    assert mounts["data-volume"] == "/mnt/data"


def test_multi_gpu_tuning_launches_one_process_per_gpu() -> None:
    job = build_job(ctx_of(tuning_workspace(instance_type="Standard_NC96ads_A100_v4")))
    tuner = container(job["spec"]["template"]["spec"], "tune-phi-3")
    assert tuner["command"][:3] == ["accelerate", "launch", "--num_processes=4"]
    assert tuner["resources"]["limits"] == {"nvidia.com/gpu": "4"}


def test_the_pusher_pushes_with_the_push_secret() -> None:
    pod = build_job(ctx_of(legacy_tuning()))["spec"]["template"]["spec"]
    pusher = container(pod, "pusher")
    assert "--push=ACR_REPO_HERE.azurecr.io/IMAGE_NAME_HERE:0.0.1" in pusher["args"]
    assert "--push-only" in pusher["args"]
    assert "--model-name=phi-3-mini-128k-instruct" in pusher["args"]
    secret = next(v for v in pod["volumes"] if v["name"] == "docker-config")
    source = secret["projected"]["sources"][0]["secret"]
    assert source["name"] == "ACR_REGISTRY_SECRET_HERE"
    assert source["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    assert pod["imagePullSecrets"] == [{"name": "ACR_REGISTRY_SECRET_HERE"}]
    assert "pause" not in {c["name"] for c in pod["containers"]}


def test_volume_output_makes_the_tuner_the_only_main_container() -> None:
    body = with_(
        tuning_workspace(),
        "tuning.output",
        {"volumeSource": {"persistentVolumeClaim": {"claimName": "out"}}},
    )
    pod = build_job(ctx_of(body))["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["tune-phi-3"]
    results = next(v for v in pod["volumes"] if v["name"] == "results-volume")
    assert results["persistentVolumeClaim"] == {"claimName": "out"}


def test_image_input_uses_a_puller_with_its_pull_secrets() -> None:
    body = with_(
        tuning_workspace(),
        "tuning.input",
        {"name": "dolly", "image": "registry.example.com/data/dolly:1", "imagePullSecrets": ["s1"]},
    )
    pod = build_job(ctx_of(body))["spec"]["template"]["spec"]
    assert next(c["name"] for c in pod["initContainers"]) == "puller"
    assert any(v["name"] == "docker-config-dolly-tuning-input" for v in pod["volumes"])


def test_volume_input_is_mounted_directly() -> None:
    body = with_(
        tuning_workspace(), "tuning.input", {"volumeSource": {"hostPath": {"path": "/data"}}}
    )
    pod = build_job(ctx_of(body))["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["tune-phi-3"]
    data = next(v for v in pod["volumes"] if v["name"] == "data-volume")
    assert data["hostPath"] == {"path": "/data"}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("training_config:\n  TrainingArguments:\n    output_dir: /mnt/results\n", "/mnt/results"),
        ("training_config:\n  TrainingArguments:\n    output_dir: out\n", "/mnt/out"),
        ("training_config:\n  TrainingArguments: {}\n", "/mnt/output"),
        ("training_config:\n  TrainingArguments:\n    output_dir: /etc\n", "/mnt/output"),
        ("{{not yaml", "/mnt/output"),
        (None, "/mnt/output"),
    ],
)
def test_the_results_directory_follows_training_arguments(
    config: str | None, expected: str
) -> None:
    assert training_output_dir(config) == expected
