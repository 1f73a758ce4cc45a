"""The tuning Job: input stage, trainer, output stage; done only once the adapter is stored.

Upstream ran the pusher next to the trainer and ended it with `killall -SIGCHLD pause`, which
never stops `pause` (quirks §13). Here the trainer is an init container and the pusher the
pod's only main container: the pod succeeds exactly when the push succeeds, and a failed
training run fails the pod (restartPolicy Never) instead of leaving a pusher waiting forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from kaito.api.workspace import TuningSpec
from kaito.contract import training
from kaito.contract.files import (
    CONFIG_MOUNT,
    DATA_DIR,
    DEFAULT_OUTPUT_DIR,
    DOCKER_CONFIG_DIR,
    RESULTS_DIR,
    TRAINING_CONFIG_PATH,
    TUNING_ALLOWED_HOSTS_ENV,
    WEIGHTS_DIR,
    under_mount_root,
)
from kaito.manifests.common import (
    JSON,
    accelerator_resources,
    child_metadata,
    harden_pod_spec,
    node_affinity,
    stamp,
    with_runtime_env,
    workload_tolerations,
)
from kaito.manifests.context import WorkspaceContext
from kaito.manifests.keys import ANNOTATION_REVISION
from kaito.manifests.weights import add_weights_pull

TUNING_SERVICE_ACCOUNT = "kaito-tuning"
TUNING_ROLE_BINDING = "kaito-tuning-progress"
TERMINATION_LOG = "/dev/termination-log"
API_ACCESS_VOLUME = "kube-api-access"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PHI3_TARGET_MODULES = "k_proj,q_proj,v_proj,o_proj,gate_proj,down_proj,up_proj"
# Retries resume from the last checkpoint; a third failure fails the Job for good.
BACKOFF_LIMIT = 2
FETCH_URLS_SCRIPT = """\
import pathlib, sys
from kaito.contract.files import DATA_DIR
from kaito.runtime.tuning.inputs import fetch_urls
fetch_urls(sys.argv[1:], pathlib.Path(DATA_DIR))
"""
FETCH_IMAGE_SCRIPT = """\
import pathlib, sys
from kaito.contract.files import DATA_DIR
from kaito.runtime.tuning.inputs import fetch_image
ref, config_dir = sys.argv[1], pathlib.Path(sys.argv[2])
configs = [None, *sorted(config_dir.glob("*.json"))] if config_dir.is_dir() else [None]
for index, config in enumerate(configs):
    try:
        fetch_image(ref, pathlib.Path(DATA_DIR), docker_config=config)
        break
    except Exception as exc:
        print(f"pull {ref} with {config or 'no credentials'}: {exc}", file=sys.stderr)
        if index == len(configs) - 1:
            sys.exit(1)
"""


def training_output_dir(config_text: str | None) -> str:
    """TrainingArguments.output_dir: relative paths go under the mount root; a missing one,
    or one outside it, is the default output directory."""
    try:
        parsed = yaml.safe_load(config_text or "")
    except yaml.YAMLError:
        return DEFAULT_OUTPUT_DIR
    value = training.section(parsed, training.TRAINING_ARGUMENTS).get(training.OUTPUT_DIR_KEY)
    if not isinstance(value, str) or not value.strip():
        return DEFAULT_OUTPUT_DIR
    return under_mount_root(value) or DEFAULT_OUTPUT_DIR


def _tuning(ctx: WorkspaceContext) -> TuningSpec:
    tuning = ctx.workspace.tuning
    assert tuning is not None, "not a tuning workspace"
    return tuning


def build_tuning_config_map(ctx: WorkspaceContext, data: Mapping[str, str]) -> JSON:
    """A copy of the default template in the workspace namespace (shared, so not owned)."""
    tuning = _tuning(ctx)
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": tuning.config_map_name,
                "namespace": ctx.namespace,
                "labels": {"app.kubernetes.io/managed-by": "kaito"},
            },
            "data": dict(data),
        }
    )


def _secret_volume(name: str, secrets: list[str], *, single: bool) -> JSON:
    """Projected dockerconfigjson secrets: `config.json` for one, `<secret>.json` for many."""
    return {
        "name": name,
        "projected": {
            "sources": [
                {
                    "secret": {
                        "name": secret,
                        "items": [
                            {
                                "key": ".dockerconfigjson",
                                "path": "config.json" if single else f"{secret}.json",
                            }
                        ],
                    }
                }
                for secret in secrets
            ]
        },
    }


def _input_stage(ctx: WorkspaceContext) -> tuple[list[JSON], list[JSON]]:
    """(init containers, extra volumes) that put the training data into /mnt/data."""
    source = _tuning(ctx).input
    data_mount = {"name": "data-volume", "mountPath": DATA_DIR}
    base = {"image": ctx.options.runtime_image, "imagePullPolicy": ctx.options.image_pull_policy}
    if source.urls:
        return [
            {
                "name": "data-downloader",
                **base,
                "command": ["python", "-c", FETCH_URLS_SCRIPT],
                "args": list(source.urls),
                "env": [
                    {
                        "name": TUNING_ALLOWED_HOSTS_ENV,
                        "value": ",".join(ctx.options.tuning_allowed_hosts),
                    }
                ],
                "volumeMounts": [data_mount],
            }
        ], []
    if source.image:
        volumes: list[JSON] = []
        config_dir = f"{DOCKER_CONFIG_DIR}/config.d/{source.name or 'input'}-tuning-input"
        mounts = [data_mount]
        if source.image_pull_secrets:
            volume = f"docker-config-{source.name or 'input'}-tuning-input"
            volumes.append(_secret_volume(volume, list(source.image_pull_secrets), single=False))
            mounts.append({"name": volume, "mountPath": config_dir})
        return [
            {
                "name": "puller",
                **base,
                "command": ["python", "-c", FETCH_IMAGE_SCRIPT],
                "args": [source.image, config_dir],
                "volumeMounts": mounts,
            }
        ], volumes
    return [], []


def tuner_command(ctx: WorkspaceContext, output_dir: str) -> tuple[list[str], list[str]]:
    """The trainer: one process per GPU through accelerate when the node has several."""
    preset = ctx.preset
    assert preset is not None
    args = [
        f"--config={TRAINING_CONFIG_PATH}",
        f"--dataset-dir={DATA_DIR}",
        f"--model={preset.hf_id}",
        f"--output-dir={output_dir}",
        "--quiet",
    ]
    if ctx.gpus_per_node > 1:
        launch = ["accelerate", "launch", f"--num_processes={ctx.gpus_per_node}", "-m"]
        return launch, ["kaito.runtime.tuning", *args]
    return ["python", "-m", "kaito.runtime.tuning"], args


def _tuner(ctx: WorkspaceContext, output_dir: str) -> JSON:
    preset = ctx.preset
    assert preset is not None
    command, args = tuner_command(ctx, output_dir)
    env: list[JSON] = [
        {"name": "PYTORCH_CUDA_ALLOC_CONF", "value": "expandable_segments:True"},
        {"name": "YAML_FILE_PATH", "value": TRAINING_CONFIG_PATH},
        {"name": "DATASET_FOLDER_PATH", "value": DATA_DIR},
        {"name": "HF_HOME", "value": WEIGHTS_DIR},
        # The runtime annotates its own pod with its progress (docs/operator.md).
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if preset.name.startswith("phi-3"):
        env.append({"name": "DEFAULT_TARGET_MODULES", "value": PHI3_TARGET_MODULES})
    return {
        "name": ctx.name,
        "image": ctx.options.runtime_image,
        "imagePullPolicy": ctx.options.image_pull_policy,
        "command": command,
        "args": args,
        "env": env,
        "resources": accelerator_resources(ctx, tuning=True),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "model-weights-volume", "mountPath": WEIGHTS_DIR},
            {"name": "config-volume", "mountPath": CONFIG_MOUNT},
            {"name": "results-volume", "mountPath": output_dir},
            {"name": "data-volume", "mountPath": DATA_DIR},
            {"name": API_ACCESS_VOLUME, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True},
        ],
    }


def build_tuning_identity(ctx: WorkspaceContext) -> list[JSON]:
    """ServiceAccount `kaito-tuning` in the workspace namespace and RoleBinding
    `kaito-tuning-progress` to the chart's tuning ClusterRole (options.tuning_cluster_role):
    patch pods, which the chart's admission policy narrows to the trainer's own pod and its
    progress annotation. The operator only binds that role (RBAC `bind`), so it never holds
    patch on pods itself.

    Shared by the namespace's tuning Workspaces, so not owned by one (like the template copy).
    """
    meta = {
        "name": TUNING_SERVICE_ACCOUNT,
        "namespace": ctx.namespace,
        "labels": {"app.kubernetes.io/managed-by": "kaito"},
    }
    return [
        stamp(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": dict(meta),
                "automountServiceAccountToken": False,
            }
        ),
        stamp(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                # Not `kaito-tuning`: that name held a binding to a namespace-wide Role, and
                # a binding's roleRef cannot change.
                "metadata": {**meta, "name": TUNING_ROLE_BINDING},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": ctx.options.tuning_cluster_role,
                },
                "subjects": [
                    {
                        "kind": "ServiceAccount",
                        "name": TUNING_SERVICE_ACCOUNT,
                        "namespace": ctx.namespace,
                    }
                ],
            }
        ),
    ]


def _api_access_volume() -> JSON:
    """The token, CA and namespace a kubelet would automount, for the trainer only."""
    return {
        "name": API_ACCESS_VOLUME,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ]
        },
    }


def _pusher(ctx: WorkspaceContext, output_dir: str, image: str) -> JSON:
    """Pushes the finished adapter; runs after the trainer, so its exit ends the pod."""
    preset = ctx.preset
    assert preset is not None
    return {
        "name": "pusher",
        "image": ctx.options.runtime_image,
        "imagePullPolicy": ctx.options.image_pull_policy,
        "command": ["python", "-m", "kaito.runtime.tuning"],
        "args": [
            f"--config={TRAINING_CONFIG_PATH}",
            f"--dataset-dir={DATA_DIR}",
            f"--output-dir={output_dir}",
            f"--push={image}",
            # Never train here: if the trainer did not finish, the push must fail, not retrain.
            "--push-only",
            f"--model-name={preset.name}",
            f"--docker-config={DOCKER_CONFIG_DIR}/config.json",
            "--quiet",
            # The pushed reference and digest, for the operator to copy into the status.
            f"--termination-log={TERMINATION_LOG}",
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "config-volume", "mountPath": CONFIG_MOUNT},
            {"name": "results-volume", "mountPath": output_dir},
            {"name": "data-volume", "mountPath": DATA_DIR},
            {"name": "docker-config", "mountPath": DOCKER_CONFIG_DIR},
        ],
    }


def results_claim_name(workspace_name: str) -> str:
    return f"{workspace_name}-results"


def uses_results_claim(ctx: WorkspaceContext) -> bool:
    """Results go to a kaito-made PVC unless the user gave an output volume (that one already
    outlives the pod)."""
    return _tuning(ctx).output.volume_source is None


def build_results_claim(ctx: WorkspaceContext) -> JSON:
    """PVC `<ws>-results` for checkpoints and the adapter: a replaced pod resumes from it.

    Sized by the preset's tuning disk; owned by the Workspace, so it is deleted with it.
    ReadWriteOnce suffices: the Job runs one pod at a time (parallelism 1).
    """
    preset = ctx.preset
    assert preset is not None and preset.tuning is not None
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": child_metadata(ctx, results_claim_name(ctx.name)),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": f"{preset.tuning.disk_gib}Gi"}},
            },
        }
    )


def build_job(ctx: WorkspaceContext, *, output_dir: str = RESULTS_DIR) -> JSON:
    """Job `<ws>` (upstream §10) with the stages as init containers, in order."""
    tuning = _tuning(ctx)
    inits, input_volumes = _input_stage(ctx)
    results: dict[str, Any] | None = tuning.output.volume_source
    if uses_results_claim(ctx):
        results = {"persistentVolumeClaim": {"claimName": results_claim_name(ctx.name)}}
    tuner = _tuner(ctx, output_dir)
    volumes: list[JSON] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "model-weights-volume", "emptyDir": {}},
        {"name": "config-volume", "configMap": {"name": tuning.config_map_name}},
        _volume("data-volume", tuning.input.volume_source if not inits else None),
        _volume("results-volume", results),
        _api_access_volume(),
        *input_volumes,
    ]
    spec: JSON = {
        "restartPolicy": "Never",
        "serviceAccountName": TUNING_SERVICE_ACCOUNT,
        "tolerations": workload_tolerations(ctx.options),
    }
    output = tuning.output
    if output.image and output.volume_source is None:
        secret = output.image_push_secret or ""
        volumes.append(_secret_volume("docker-config", [secret], single=True))
        spec["initContainers"] = [*inits, tuner]
        spec["containers"] = [_pusher(ctx, output_dir, output.image)]
        spec["imagePullSecrets"] = [{"name": secret}]
    else:
        if inits:
            spec["initContainers"] = inits
        spec["containers"] = [tuner]
    spec["volumes"] = volumes
    spec = add_weights_pull(spec, tuning.preset, ctx.options, ctx.preset)
    spec = with_runtime_env(spec, ctx.options)
    affinity = node_affinity(ctx.match_labels)
    if affinity is not None:
        spec["affinity"] = affinity
    metadata = child_metadata(ctx, ctx.name, annotations={ANNOTATION_REVISION: ctx.revision})
    return stamp(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata,
            "spec": {
                "backoffLimit": BACKOFF_LIMIT,
                "template": {
                    "metadata": {"labels": dict(metadata["labels"])},
                    "spec": harden_pod_spec(spec),
                },
            },
        }
    )


def _volume(name: str, source: dict[str, Any] | None) -> JSON:
    if source:
        return {"name": name, **source}
    return {"name": name, "emptyDir": {}}
