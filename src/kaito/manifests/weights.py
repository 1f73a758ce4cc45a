"""The weights pull stage: an init container that pulls a weights image through a node cache."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from kaito.api.workspace import PresetSpec
from kaito.contract.files import DOCKER_CONFIG_DIR, WEIGHTS_DIR
from kaito.manifests.common import JSON
from kaito.manifests.options import ClusterOptions
from kaito.presets import Preset

WEIGHTS_VOLUME = "model-weights-volume"
# On the node, so a restarted or rescheduled pod on the same node downloads nothing. The
# directory must be writable by the runtime's user (kaito pods do not run as root); when it
# is not, the puller keeps its cache inside the weights volume and only skips the reuse.
CACHE_HOST_PATH = "/var/lib/kaito/weights-cache"
CACHE_MOUNT = "/var/cache/kaito"
CACHE_VOLUME = "weights-cache"
SECRETS_DIR = f"{DOCKER_CONFIG_DIR}/config.d/weights"
SECRETS_VOLUME = "docker-config-weights"
INIT_NAME = "weights-puller"
# Where HF_HOME moves when the weights directory becomes read-only for the workload: the
# libraries write caches there (datasets, remote code), never into the shared weights.
WRITABLE_HF_HOME = "/tmp/hf-home"


@dataclass(frozen=True)
class WeightsPull:
    """What a pod needs for the pull stage: one init container, its volumes, pull secrets."""

    init_container: JSON
    volumes: list[JSON]
    image_pull_secrets: list[JSON]


def weights_image(
    preset: PresetSpec | None,
    catalog_preset: Preset | None = None,
    options: ClusterOptions | None = None,
) -> tuple[str, list[str]] | None:
    """(image, pull secrets) when the workspace's preset names a weights image, else None.

    The workspace's `presetOptions.image` wins; otherwise the catalog preset's image, from
    the operator's preset registry or the catalog entry (`Preset.weights_image_in`). The
    secrets are `presetOptions.imagePullSecrets`, plus the operator's preset pull secrets
    when the image is the catalog's (they belong to that registry).
    """
    options = options or ClusterOptions()
    chosen = preset.preset_options if preset is not None else None
    secrets = list(chosen.image_pull_secrets or []) if chosen is not None else []
    if chosen is not None and chosen.image:
        return chosen.image, secrets
    if preset is None or catalog_preset is None:
        return None
    image = catalog_preset.weights_image_in(options.preset_registry)
    if image is None:
        return None
    return image, [*secrets, *options.preset_pull_secrets]


def build_weights_pull(
    image: str,
    options: ClusterOptions,
    *,
    pull_secrets: Sequence[str] = (),
    weights_dir: str = WEIGHTS_DIR,
    weights_volume: str = WEIGHTS_VOLUME,
    cache_host_path: str | None = CACHE_HOST_PATH,
) -> WeightsPull:
    """`kaito models pull IMAGE weights_dir` as an init container of the runtime image.

    Private registries: each pull secret's `.dockerconfigjson` is projected into one folder;
    the puller tries anonymous access, then each file (like upstream's adapter puller).
    `cache_host_path=None` keeps the cache in the pod (for namespaces that forbid hostPath).
    """
    command = ["python", "-m", "kaito.cli.main", "models", "pull", image, weights_dir]
    command += ["--cache-dir", CACHE_MOUNT]
    mounts: list[JSON] = [
        {"name": weights_volume, "mountPath": weights_dir},
        {"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT},
    ]
    cache: JSON = (
        {"name": CACHE_VOLUME, "hostPath": {"path": cache_host_path, "type": "DirectoryOrCreate"}}
        if cache_host_path
        else {"name": CACHE_VOLUME, "emptyDir": {}}
    )
    volumes: list[JSON] = [cache]
    secrets = list(dict.fromkeys(pull_secrets))
    if secrets:
        command += ["--docker-config-dir", SECRETS_DIR]
        mounts.append({"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR, "readOnly": True})
        volumes.append(
            {
                "name": SECRETS_VOLUME,
                "projected": {
                    "sources": [
                        {
                            "secret": {
                                "name": secret,
                                "items": [{"key": ".dockerconfigjson", "path": f"{secret}.json"}],
                            }
                        }
                        for secret in secrets
                    ]
                },
            }
        )
    init: JSON = {
        "name": INIT_NAME,
        "image": options.runtime_image,
        "imagePullPolicy": options.image_pull_policy,
        "command": command,
        "volumeMounts": mounts,
    }
    return WeightsPull(init, volumes, [{"name": s} for s in secrets])


def with_weights_pull(
    pod_spec: JSON,
    pull: WeightsPull,
    *,
    weights_dir: str = WEIGHTS_DIR,
    weights_volume: str = WEIGHTS_VOLUME,
    model_flag: str = "--model",
) -> JSON:
    """A copy of `pod_spec` that pulls first and points the main container at the weights.

    The pull runs before any other init container (adapter pullers need no weights, but a
    failing weights pull should fail fast). Every other container's `--model=<hub id>`
    becomes `--model=<weights_dir>`, so the server or tuner loads the pulled files instead of
    the hub (the tuner is an init container when a pusher follows it).

    Every other container mounts the weights volume read-only: its files are hard links to
    the node cache, so a writable mount would let one pod change the bytes the next pod on
    the node loads. An HF_HOME inside the weights directory moves to WRITABLE_HF_HOME.
    """
    spec = copy.deepcopy(pod_spec)
    spec["initContainers"] = [copy.deepcopy(pull.init_container), *spec.get("initContainers", [])]
    names = {volume["name"] for volume in spec.get("volumes", [])}
    spec["volumes"] = [
        *spec.get("volumes", []),
        *(copy.deepcopy(v) for v in pull.volumes if v["name"] not in names),
    ]
    if pull.image_pull_secrets:
        known = [s["name"] for s in spec.get("imagePullSecrets", [])]
        spec["imagePullSecrets"] = [
            *spec.get("imagePullSecrets", []),
            *(s for s in pull.image_pull_secrets if s["name"] not in known),
        ]
    prefix = f"{model_flag}="
    for container in [*spec["initContainers"][1:], *spec.get("containers", [])]:
        for mount in container.get("volumeMounts", []):
            if mount.get("name") == weights_volume:
                mount["readOnly"] = True
        for variable in container.get("env", []):
            if variable.get("name") == "HF_HOME" and variable.get("value") == weights_dir:
                variable["value"] = WRITABLE_HF_HOME
        for key in ("args", "command"):
            if container.get(key):
                container[key] = [
                    f"{prefix}{weights_dir}" if str(arg).startswith(prefix) else arg
                    for arg in container[key]
                ]
    return spec


def add_weights_pull(
    pod_spec: JSON,
    preset: PresetSpec | None,
    options: ClusterOptions,
    catalog_preset: Preset | None = None,
) -> JSON:
    """The hook the workload builders call: `pod_spec` unchanged unless a weights image applies."""
    found = weights_image(preset, catalog_preset, options)
    if found is None:
        return pod_spec
    image, secrets = found
    return with_weights_pull(pod_spec, build_weights_pull(image, options, pull_secrets=secrets))
