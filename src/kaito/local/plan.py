"""Turns a Workspace body into a local plan (what to fetch, train, serve); pure, no I/O."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from kaito.api import FieldError, Workspace, parse_workspace
from kaito.contract.files import TRAINING_CONFIG_FILE
from kaito.presets import Catalog, Preset, default_catalog
from kaito.presets.catalog import select_runtime
from kaito.presets.validation import validate_workspace
from kaito.runtime.tuning.urls import ALLOWED_HOSTS_ENV

# A model needs roughly its weights plus activations and the runtime itself; below this factor
# of free memory a run would swap or be killed half way, which is worse than refusing now.
MEMORY_HEADROOM = 2.0
RUNTIME_OVERHEAD_GIB = 1.5


class LocalModeError(Exception):
    """The Workspace cannot run here; the message is one line that says what to fix."""


@dataclass(frozen=True)
class HostInfo:
    """What this machine offers; measured by the shell, passed in so planning stays pure."""

    memory_gib: float
    cuda_devices: int = 0
    gpu_memory_gib: float = 0.0


@dataclass(frozen=True)
class TuningPlan:
    """Train an adapter for `preset` from one input and deliver it to one output."""

    name: str
    preset: Preset
    method: Literal["lora", "qlora"]
    config_file: Path | None
    input_urls: tuple[str, ...] = ()
    input_image: str | None = None
    input_dir: Path | None = None
    output_dir: Path | None = None
    output_image: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdapterPlan:
    """One adapter to serve: a local directory or an image to pull first."""

    name: str
    strength: float
    directory: Path | None = None
    image: str | None = None


@dataclass(frozen=True)
class ServePlan:
    """Serve `preset` (plus adapters) on this machine: llama.cpp for GGUF presets without a GPU."""

    name: str
    preset: Preset
    adapters: tuple[AdapterPlan, ...] = ()
    config_file: Path | None = None
    engine: str = "transformers"  # "llamacpp" where the operator would pick it for this host
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _is_loopback_url_error(error: FieldError, workspace: Workspace) -> bool:
    # The cluster refuses loopback dataset URLs to stop pods reaching internal services; on
    # one's own machine a file served on localhost is a legitimate input.
    if workspace.tuning is None or not error.field.startswith("tuning.input.urls["):
        return False
    index = int(error.field.split("[", 1)[1].rstrip("]"))
    host = urlsplit(workspace.tuning.input.urls[index]).hostname or ""  # type: ignore[index]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def volume_path(
    volume_source: Mapping[str, Any] | None,
    name: str | None,
    volumes: Mapping[str, Path],
    *,
    field_path: str,
) -> Path:
    """Map a Kubernetes VolumeSource to a directory here.

    hostPath volumes are used as they are; anything else must be mapped with `--volume`,
    looked up by the claim name, the data source's name, or the ConfigMap/Secret name.
    """
    source = dict(volume_source or {})
    host_path = source.get("hostPath")
    if isinstance(host_path, Mapping) and host_path.get("path"):
        return Path(str(host_path["path"]))
    keys: list[str] = []
    claim = source.get("persistentVolumeClaim")
    if isinstance(claim, Mapping) and claim.get("claimName"):
        keys.append(str(claim["claimName"]))
    for kind, key in (("configMap", "name"), ("secret", "secretName")):
        entry = source.get(kind)
        if isinstance(entry, Mapping) and entry.get(key):
            keys.append(str(entry[key]))
    if name:
        keys.append(name)
    for key in keys:
        if key in volumes:
            return volumes[key]
    wanted = keys[0] if keys else "NAME"
    raise LocalModeError(
        f"{field_path}: map this volume to a local directory with --volume {wanted}=PATH"
    )


def check_host(preset: Preset, host: HostInfo) -> None:
    """Refuse, before any download, a preset this machine cannot run."""
    if not preset.cpu and host.cuda_devices == 0:
        raise LocalModeError(
            f"preset {preset.name} needs an NVIDIA GPU with about {preset.weights_gib:.0f} GiB "
            "of memory and this machine has none: run it on a cluster, or try "
            "smollm2-135m-instruct locally"
        )
    needed = preset.weights_gib * MEMORY_HEADROOM + RUNTIME_OVERHEAD_GIB
    available = host.gpu_memory_gib if (host.cuda_devices and not preset.cpu) else host.memory_gib
    if needed > available:
        raise LocalModeError(
            f"preset {preset.name} needs about {needed:.1f} GiB of memory and this machine "
            f"has {available:.1f} GiB: choose a smaller preset"
        )


def plan_workspace(
    body: Mapping[str, Any],
    *,
    host: HostInfo,
    volumes: Mapping[str, Path] | None = None,
    config_file: Path | None = None,
    catalog: Catalog | None = None,
) -> TuningPlan | ServePlan:
    """Validate `body` with the operator's own rules, then plan its local run.

    Raises LocalModeError with every admission error on one line each, or with the single
    reason why this machine cannot run it.
    """
    catalog = catalog or default_catalog()
    volumes = dict(volumes or {})
    # The same allowlist the downloader reads, so a dataset server on this machine can be used.
    allowed = tuple(
        h.strip() for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()
    )
    errors = validate_workspace(
        dict(body), catalog=catalog, config_map_lookup=None, allowed_hosts=allowed
    )
    try:
        workspace = parse_workspace(dict(body))
    except Exception:
        workspace = None
    if workspace is not None:
        errors = [e for e in errors if not _is_loopback_url_error(e, workspace)]
    errors = [e for e in errors if e.severity == "error"]
    if errors or workspace is None:
        raise LocalModeError("; ".join(str(e) for e in errors) or "not a Workspace")
    name = workspace.metadata.name or "workspace"
    if workspace.tuning is not None:
        return _plan_tuning(workspace, name, host, volumes, config_file, catalog)
    return _plan_inference(workspace, name, host, volumes, config_file, catalog)


def _preset(name: str, catalog: Catalog) -> Preset:
    preset = catalog.get(name)
    if preset is None:  # validation already said so; keeps mypy and callers honest
        raise LocalModeError(f"unknown preset {name!r}: run `kaito presets` to list them")
    return preset


def _plan_tuning(
    workspace: Workspace,
    name: str,
    host: HostInfo,
    volumes: Mapping[str, Path],
    config_file: Path | None,
    catalog: Catalog,
) -> TuningPlan:
    tuning = workspace.tuning
    assert tuning is not None
    preset = _preset(tuning.preset.name, catalog)
    check_host(preset, host)
    if tuning.config and config_file is None:
        raise LocalModeError(
            f"tuning.config names ConfigMap {tuning.config!r}: pass its {TRAINING_CONFIG_FILE} "
            "with --config FILE"
        )
    source = tuning.input
    output = tuning.output
    input_dir = None
    if source.volume_source is not None:
        input_dir = volume_path(
            source.volume_source, source.name, volumes, field_path="tuning.input.volumeSource"
        )
    output_dir = None
    if output.volume_source is not None:
        output_dir = volume_path(
            output.volume_source, None, volumes, field_path="tuning.output.volumeSource"
        )
    method = (tuning.method or "lora").lower()
    return TuningPlan(
        name=name,
        preset=preset,
        method="qlora" if method == "qlora" else "lora",
        config_file=config_file,
        input_urls=tuple(source.urls or ()),
        input_image=source.image,
        input_dir=input_dir,
        output_dir=output_dir,
        output_image=output.image,
    )


def _plan_inference(
    workspace: Workspace,
    name: str,
    host: HostInfo,
    volumes: Mapping[str, Path],
    config_file: Path | None,
    catalog: Catalog,
) -> ServePlan:
    inference = workspace.inference
    assert inference is not None
    if inference.preset is None:
        raise LocalModeError(
            "inference.template: a custom pod template needs a cluster; local mode serves presets"
        )
    preset = _preset(inference.preset.name, catalog)
    check_host(preset, host)
    adapters = []
    for index, adapter in enumerate(inference.adapters or []):
        source = adapter.source
        adapter_name = source.name or f"adapter-{index}"
        directory = None
        if source.volume_source is not None:
            directory = volume_path(
                source.volume_source,
                source.name,
                volumes,
                field_path=f"inference.adapters[{index}].source.volumeSource",
            )
        adapters.append(
            AdapterPlan(
                name=adapter_name,
                strength=float(adapter.effective_strength),
                directory=directory,
                image=source.image,
            )
        )
    engine = select_runtime(
        preset, workspace.annotations, vllm_enabled=False, gpu_node=host.cuda_devices > 0
    )
    return ServePlan(
        name=name,
        preset=preset,
        adapters=tuple(adapters),
        config_file=config_file,
        engine=engine,
    )
