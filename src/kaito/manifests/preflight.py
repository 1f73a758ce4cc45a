"""The tuning preflight Job: validate the dataset on a CPU pod before any GPU node is asked for.

The operator must not import the runtime, so the check runs where the runtime lives: a pod
running `kaito tune --check`, which leaves its compact JSON result in the termination
message (read by the planner from the pod status; `FallbackToLogsOnError` keeps a crash's
last log lines instead).
"""

from __future__ import annotations

import copy

from kaito.contract.files import CONFIG_MOUNT, DATA_DIR, DOCKER_CONFIG_DIR, TRAINING_CONFIG_PATH
from kaito.manifests.common import JSON, child_metadata, harden_pod_spec, stamp, with_runtime_env
from kaito.manifests.context import WorkspaceContext
from kaito.manifests.keys import LABEL_TUNING_STAGE
from kaito.manifests.tuning import TERMINATION_LOG, _secret_volume

STAGE_PREFLIGHT = "preflight"
# Tokenizing a dataset is CPU work: modest requests and no GPU, so any node can run it.
PREFLIGHT_RESOURCES: JSON = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"memory": "4Gi"},
}


def preflight_job_name(workspace_name: str) -> str:
    return f"{workspace_name}-preflight"


def build_preflight_job(ctx: WorkspaceContext) -> JSON:
    """Job `<ws>-preflight`: one try, no GPU, no GPU tolerations, the trainer's config."""
    tuning = ctx.workspace.tuning
    preset = ctx.preset
    assert tuning is not None and preset is not None
    args = [
        "--check",
        f"--config={TRAINING_CONFIG_PATH}",
        f"--dataset-dir={DATA_DIR}",
        f"--model={preset.hf_id}",
        # The check is about the data; QLoRA's GPU need is the GPU node's business.
        "--allow-lora-fallback",
        "--quiet",
        f"--termination-log={TERMINATION_LOG}",
    ]
    mounts: list[JSON] = [
        {"name": "config-volume", "mountPath": CONFIG_MOUNT},
        {"name": "data-volume", "mountPath": DATA_DIR},
    ]
    volumes: list[JSON] = [
        {"name": "config-volume", "configMap": {"name": tuning.config_map_name}},
        {"name": "data-volume", **(tuning.input.volume_source or {"emptyDir": {}})},
    ]
    source = tuning.input
    spec: JSON = {"restartPolicy": "Never"}
    if source.urls:
        args += [f"--url={url}" for url in source.urls]
    elif source.image:
        args.append(f"--image={source.image}")
        if source.image_pull_secrets:
            secrets = list(source.image_pull_secrets)
            volumes.append(_secret_volume("docker-config", secrets[:1], single=True))
            mounts.append({"name": "docker-config", "mountPath": DOCKER_CONFIG_DIR})
            args.append(f"--docker-config={DOCKER_CONFIG_DIR}/config.json")
    spec["containers"] = [
        {
            "name": "preflight",
            "image": ctx.options.runtime_image,
            "imagePullPolicy": ctx.options.image_pull_policy,
            "command": ["python", "-m", "kaito.runtime.tuning"],
            "args": args,
            "resources": PREFLIGHT_RESOURCES,
            "terminationMessagePath": TERMINATION_LOG,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": mounts,
        }
    ]
    spec["volumes"] = volumes
    if ctx.options.workload_tolerations:
        # No GPU tolerations (it runs on any node), only the operator's own.
        spec["tolerations"] = copy.deepcopy(list(ctx.options.workload_tolerations))
    spec = with_runtime_env(spec, ctx.options)
    metadata = child_metadata(ctx, preflight_job_name(ctx.name))
    labels = {**metadata["labels"], LABEL_TUNING_STAGE: STAGE_PREFLIGHT}
    return stamp(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata,
            "spec": {
                "backoffLimit": 0,
                "template": {"metadata": {"labels": labels}, "spec": harden_pod_spec(spec)},
            },
        }
    )
