"""The inference workload: StatefulSet, Services and the inference ConfigMap (upstream §9)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

from kaito.api.inferenceset import LABEL_INFERENCESET
from kaito.api.workspace import ANNOTATION_API_KEY_SECRET, ANNOTATION_ENABLE_LB, AdapterSpec
from kaito.contract.files import (
    ADAPTER_DIR,
    API_KEY_DIR,
    API_KEY_PATH,
    API_KEY_SECRET_KEY,
    CONFIG_MOUNT,
    DOCKER_CONFIG_DIR,
    INFERENCE_CONFIG_FILE,
    INFERENCE_CONFIG_PATH,
    WEIGHTS_DIR,
)
from kaito.contract.inference import VLLM_SECTION
from kaito.manifests.common import (
    JSON,
    accelerator_resources,
    child_metadata,
    harden_pod_spec,
    node_affinity,
    stamp,
    with_runtime_env,
    workload_tolerations,
    workspace_labels,
)
from kaito.manifests.context import WorkspaceContext
from kaito.manifests.keys import (
    ANNOTATION_REVISION,
    HTTP_PORT,
    LABEL_POD_NAME,
    LABEL_WORKSPACE,
    SERVICE_PORT,
)
from kaito.manifests.weights import add_weights_pull

HEALTH_PATH = "/health"
PROBE_PERIOD_S = 10
# The startup probe asks more often than upstream's 10 s (with as many more tries, so the same
# deadline): a small model loads in seconds, and each period was up to 10 s of a server that
# answers but gets no traffic. A loading server answers /health with a cheap 503.
STARTUP_PROBE_PERIOD_S = 2
# Upstream's inference-params-template; the runtime merges `vllm:` into the engine args.
DEFAULT_INFERENCE_CONFIG = (
    f"kv_cache_cpu_memory_utilization: 0.5\n{VLLM_SECTION}:\n  cpu-offload-gb: 0\n"
)
# Pulls one adapter image's /data; tries anonymous access, then each projected secret.
ADAPTER_PULL_SCRIPT = """\
import pathlib, sys
from kaito.runtime.oci.adapter import pull_adapter
ref, dest, config_dir = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
configs = [None, *sorted(config_dir.glob("*.json"))] if config_dir.is_dir() else [None]
for index, config in enumerate(configs):
    try:
        pull_adapter(ref, dest, docker_config=config)
        break
    except Exception as exc:
        print(f"pull {ref} with {config or 'no credentials'}: {exc}", file=sys.stderr)
        if index == len(configs) - 1:
            sys.exit(1)
"""


def headless_service_name(name: str) -> str:
    return f"{name}-headless"


def default_config_map_name(name: str) -> str:
    return f"{name}-inference-config"


def render_flags(flags: Mapping[str, str]) -> list[str]:
    """`--key=value`, or a bare `--key` for an empty value; sorted for stable manifests."""
    return [
        f"--{key}={value}" if value != "" else f"--{key}" for key, value in sorted(flags.items())
    ]


def config_map_name(ctx: WorkspaceContext) -> str:
    """The user's ConfigMap, else the workspace's own default (mounted at /mnt/config)."""
    inference = ctx.workspace.inference
    if inference is not None and inference.config:
        return inference.config
    return default_config_map_name(ctx.name)


def build_inference_config_map(ctx: WorkspaceContext) -> JSON | None:
    """The default inference ConfigMap, owned by the workspace; None when the user has one."""
    inference = ctx.workspace.inference
    if inference is None or inference.config or inference.template is not None:
        return None
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": child_metadata(ctx, default_config_map_name(ctx.name)),
            "data": {INFERENCE_CONFIG_FILE: DEFAULT_INFERENCE_CONFIG},
        }
    )


def _adapters(ctx: WorkspaceContext) -> list[AdapterSpec]:
    inference = ctx.workspace.inference
    return list(inference.adapters or []) if inference is not None else []


def _adapter_name(adapter: AdapterSpec, index: int) -> str:
    return adapter.source.name or f"adapter-{index}"


def gpu_memory_utilization(ctx: WorkspaceContext) -> str:
    return "0.82" if "a10" in ctx.sku.gpu_model.lower().split() else "0.84"


def api_key_secret(ctx: WorkspaceContext) -> str | None:
    """The Secret holding the server's API key (annotation `kaito.sh/api-key-secret`)."""
    return ctx.workspace.annotations.get(ANNOTATION_API_KEY_SECRET, "").strip() or None


def _api_key_volume(ctx: WorkspaceContext) -> tuple[list[JSON], list[JSON]]:
    """(volumes, mounts) putting the Secret's key at API_KEY_PATH, read-only."""
    secret = api_key_secret(ctx)
    if secret is None:
        return [], []
    items = [{"key": API_KEY_SECRET_KEY, "path": API_KEY_SECRET_KEY}]
    volume = {"name": "api-key-secret", "secret": {"secretName": secret, "items": items}}
    return [volume], [{"name": "api-key-secret", "mountPath": API_KEY_DIR, "readOnly": True}]


def inference_flags(ctx: WorkspaceContext) -> dict[str, str]:
    """The flags of `python -m kaito.runtime.inference` for the resolved preset and engine."""
    preset = ctx.preset
    assert preset is not None, "custom templates carry their own command"
    flags: dict[str, str] = {
        "engine": ctx.runtime,
        "model": preset.hf_id,
        "served-model-name": preset.served_name,
        "port": str(HTTP_PORT),
        "config": INFERENCE_CONFIG_PATH,
    }
    if _adapters(ctx):
        flags["adapter-dir"] = ADAPTER_DIR
    if api_key_secret(ctx):
        flags["api-key-file"] = API_KEY_PATH
    if ctx.runtime == "vllm":
        for key, value in preset.vllm_args.items():
            flags[key.replace("_", "-")] = value
        flags["dtype"] = preset.dtype if preset.dtype != "auto" else "auto"
        flags["download-dir"] = WEIGHTS_DIR
        flags["gpu-memory-utilization"] = gpu_memory_utilization(ctx)
        if preset.revision:
            # The catalog's commit pins the weights as well as any repository code.
            flags["revision"] = preset.revision
            flags["code-revision"] = preset.revision
        if _adapters(ctx):
            flags["enable-lora"] = ""
        # One node per vLLM workspace (context.resolve refuses more): its GPUs share the model.
        if ctx.gpus_per_node > 1:
            flags["tensor-parallel-size"] = str(ctx.gpus_per_node)
    else:
        for key, value in preset.transformers_args.items():
            flags[key] = value
        if preset.revision:
            flags["revision"] = preset.revision
    return flags


def inference_command(ctx: WorkspaceContext) -> tuple[list[str], list[str]]:
    """(command, args) of the main container; no shell, so nothing needs quoting."""
    return ["python", "-m", "kaito.runtime.inference"], render_flags(inference_flags(ctx))


def startup_failure_threshold(ctx: WorkspaceContext) -> int:
    minutes = ctx.preset.startup_timeout_minutes if ctx.preset is not None else 30
    return math.ceil(minutes * 60 / STARTUP_PROBE_PERIOD_S)


def _http_probe(**extra: int) -> JSON:
    return {
        "httpGet": {"path": HEALTH_PATH, "port": HTTP_PORT, "scheme": "HTTP"},
        "periodSeconds": PROBE_PERIOD_S,
        **extra,
    }


def _adapter_parts(ctx: WorkspaceContext) -> tuple[list[JSON], list[JSON], list[JSON], list[JSON]]:
    """(init containers, volumes, main-container mounts, env) for the inference adapters."""
    inits: list[JSON] = []
    volumes: list[JSON] = []
    mounts: list[JSON] = []
    env: list[JSON] = []
    shared = False
    for index, adapter in enumerate(_adapters(ctx)):
        name = _adapter_name(adapter, index)
        source = adapter.source
        if adapter.strength is not None:
            env.append({"name": name, "value": adapter.strength})
        if source.volume_source is not None:
            volume = f"adapter-volume-{name}"
            volumes.append({"name": volume, **copy.deepcopy(source.volume_source)})
            mounts.append({"name": volume, "mountPath": f"{ADAPTER_DIR}/{name}"})
            continue
        if source.image is None:
            continue
        shared = True
        init_mounts: list[JSON] = [{"name": "adapter-volume", "mountPath": ADAPTER_DIR}]
        config_dir = f"{DOCKER_CONFIG_DIR}/config.d/{name}-inference-adapter"
        if source.image_pull_secrets:
            secret_volume = f"docker-config-{name}-inference-adapter"
            volumes.append(
                {
                    "name": secret_volume,
                    "projected": {
                        "sources": [
                            {
                                "secret": {
                                    "name": secret,
                                    "items": [
                                        {"key": ".dockerconfigjson", "path": f"{secret}.json"}
                                    ],
                                }
                            }
                            for secret in source.image_pull_secrets
                        ]
                    },
                }
            )
            init_mounts.append({"name": secret_volume, "mountPath": config_dir})
        inits.append(
            {
                "name": f"puller-{name}",
                "image": ctx.options.runtime_image,
                "imagePullPolicy": ctx.options.image_pull_policy,
                "command": ["python", "-c", ADAPTER_PULL_SCRIPT],
                "args": [source.image, f"{ADAPTER_DIR}/{name}", config_dir],
                "volumeMounts": init_mounts,
            }
        )
    if shared:
        volumes.insert(0, {"name": "adapter-volume", "emptyDir": {}})
        mounts.insert(0, {"name": "adapter-volume", "mountPath": ADAPTER_DIR})
    return inits, volumes, mounts, env


def _pull_secrets(ctx: WorkspaceContext) -> list[JSON]:
    names: list[str] = []
    for adapter in _adapters(ctx):
        for secret in adapter.source.image_pull_secrets or []:
            if secret not in names:
                names.append(secret)
    return [{"name": name} for name in names]


def build_pod_template(ctx: WorkspaceContext) -> JSON:
    """The preset pod: one GPU-node-sized server per node (upstream §9.1)."""
    preset = ctx.preset
    assert preset is not None
    command, args = inference_command(ctx)
    inits, adapter_volumes, adapter_mounts, adapter_env = _adapter_parts(ctx)
    key_volumes, key_mounts = _api_key_volume(ctx)
    env: list[JSON] = []
    if ctx.runtime == "vllm":
        env += [
            {"name": "VLLM_USE_FLASHINFER_SAMPLER", "value": "0"},
            {"name": "VLLM_USE_DEEP_GEMM", "value": "0"},
        ]
    inference = ctx.workspace.inference
    secret = inference.preset.model_access_secret if inference and inference.preset else None
    if secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": secret, "key": "HF_TOKEN", "optional": True}
                },
            }
        )
    env += adapter_env
    ports: list[JSON] = [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    container: JSON = {
        "name": ctx.name,
        "image": ctx.options.runtime_image,
        "imagePullPolicy": ctx.options.image_pull_policy,
        "command": command,
        "args": args,
        "resources": accelerator_resources(ctx),
        "ports": ports,
        "startupProbe": _http_probe(
            periodSeconds=STARTUP_PROBE_PERIOD_S,
            failureThreshold=startup_failure_threshold(ctx),
        ),
        "livenessProbe": _http_probe(failureThreshold=3, initialDelaySeconds=0),
        # No initial delay (upstream waits 30 s): readiness is only probed once the startup
        # probe has seen the server answer, so the delay only held a loaded server back.
        "readinessProbe": _http_probe(initialDelaySeconds=0),
        "env": env,
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "model-weights-volume", "mountPath": WEIGHTS_DIR},
            {"name": "config-volume", "mountPath": CONFIG_MOUNT},
            *adapter_mounts,
            *key_mounts,
        ],
    }
    volumes: list[JSON] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "model-weights-volume", "emptyDir": {}},
        {"name": "config-volume", "configMap": {"name": config_map_name(ctx)}},
        *adapter_volumes,
        *key_volumes,
    ]
    spec: JSON = {
        "containers": [container],
        "volumes": volumes,
        "tolerations": workload_tolerations(ctx.options),
    }
    if inits:
        spec["initContainers"] = inits
    affinity = node_affinity(ctx.match_labels)
    if affinity is not None:
        spec["affinity"] = affinity
    secrets = _pull_secrets(ctx)
    if secrets:
        spec["imagePullSecrets"] = secrets
    spec = add_weights_pull(spec, inference.preset if inference else None, ctx.options, ctx.preset)
    spec = with_runtime_env(spec, ctx.options)
    return {"metadata": {"labels": pod_labels(ctx)}, "spec": harden_pod_spec(spec)}


def _custom_pod_template(ctx: WorkspaceContext) -> JSON:
    """The user's template with kaito's labels, node affinity and GPU tolerations."""
    inference = ctx.workspace.inference
    assert inference is not None and inference.template is not None
    template: JSON = copy.deepcopy(inference.template)
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), **pod_labels(ctx)}
    spec = template.setdefault("spec", {})
    affinity = node_affinity(ctx.match_labels)
    if affinity is None:
        spec.pop("affinity", None)
    else:
        spec["affinity"] = affinity
    spec["tolerations"] = [
        *(spec.get("tolerations") or []),
        *workload_tolerations(ctx.options),
    ]
    return template


def pod_labels(ctx: WorkspaceContext) -> dict[str, str]:
    """The workspace label, plus its InferenceSet's so one Service fronts the whole set."""
    labels = workspace_labels(ctx.workspace)
    inference_set = (ctx.workspace.metadata.labels or {}).get(LABEL_INFERENCESET)
    if inference_set:
        labels[LABEL_INFERENCESET] = inference_set
    return labels


def build_statefulset(ctx: WorkspaceContext) -> JSON:
    """StatefulSet `<ws>`: replicas = target nodes, one pod per node (upstream current)."""
    custom = ctx.preset is None
    template = _custom_pod_template(ctx) if custom else build_pod_template(ctx)
    spec: JSON = {
        "replicas": ctx.target_node_count,
        "selector": {"matchLabels": workspace_labels(ctx.workspace)},
        "podManagementPolicy": "Parallel",
        "template": template,
        "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Retain", "whenDeleted": "Delete"},
    }
    if not custom:
        spec["serviceName"] = headless_service_name(ctx.name)
    return stamp(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": child_metadata(
                ctx, ctx.name, annotations={ANNOTATION_REVISION: ctx.revision}
            ),
            "spec": spec,
        }
    )


def build_services(ctx: WorkspaceContext) -> list[JSON]:
    """Service `<ws>` (80 -> 5000 on the leader pod) and the headless `<ws>-headless`."""
    lb = ctx.workspace.annotations.get(ANNOTATION_ENABLE_LB) == "True"
    ports: list[JSON] = [
        {"name": "http", "port": SERVICE_PORT, "targetPort": HTTP_PORT, "protocol": "TCP"}
    ]
    selector = workspace_labels(ctx.workspace)
    if ctx.workspace.replicas <= 1:
        # One replica may span nodes: only its leader serves. Replicas each serve alone.
        selector[LABEL_POD_NAME] = f"{ctx.name}-0"
    main: JSON = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(ctx, ctx.name),
        "spec": {
            "type": "LoadBalancer" if lb else "ClusterIP",
            "selector": selector,
            "ports": ports,
            "publishNotReadyAddresses": True,
        },
    }
    headless: JSON = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(ctx, headless_service_name(ctx.name)),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_WORKSPACE: ctx.name},
            "publishNotReadyAddresses": True,
        },
    }
    return [stamp(main), stamp(headless)]


def build_inference_objects(ctx: WorkspaceContext) -> list[JSON]:
    """Every namespaced object of an inference workspace, in apply order."""
    objects: list[JSON] = [*build_services(ctx)]
    config_map = build_inference_config_map(ctx)
    if config_map is not None:
        objects.append(config_map)
    objects.append(build_statefulset(ctx))
    return objects
