"""Operator limits checked at admission (and again by the planner): GPU instance types for GPU
presets, NodeClaims per Workspace, and what a custom pod template may ask of its node."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kaito.api.errors import FieldError
from kaito.api.workspace import Workspace
from kaito.presets.catalog import Preset
from kaito.presets.estimator import estimate_nodes
from kaito.presets.skus import Sku


@dataclass(frozen=True)
class Limits:
    """The operator's limit settings (KAITO_* variables, chart `limits.*`)."""

    allow_non_gpu_instance_types: bool = False
    allow_privileged_templates: bool = False
    max_nodeclaims_per_workspace: int = 8


DEFAULT_LIMITS = Limits()
ALLOW_NON_GPU = "KAITO_ALLOW_NON_GPU_INSTANCE_TYPES, chart value limits.allowNonGpuInstanceTypes"
ALLOW_PRIVILEGED = "KAITO_ALLOW_PRIVILEGED_TEMPLATES, chart value limits.allowPrivilegedTemplates"
MAX_CLAIMS = "KAITO_MAX_NODECLAIMS_PER_WORKSPACE, chart value limits.maxNodeClaimsPerWorkspace"


def instance_type_errors(
    ws: Workspace, preset: Preset | None, sku: Sku | None, limits: Limits
) -> list[FieldError]:
    """A GPU preset needs an instance type kaito knows as a GPU SKU: an unknown or CPU type
    would get NodeClaims whose nodes never qualify. CPU presets run on any type."""
    instance_type = ws.instance_type
    if preset is None or preset.cpu or not instance_type or limits.allow_non_gpu_instance_types:
        return []
    if sku is not None and sku.known and sku.gpus > 0:
        return []
    what = "has no GPU" if sku is not None and sku.known else "is not a GPU SKU kaito knows"
    return [
        FieldError(
            "resource.instanceType",
            f"{instance_type!r} {what}, and preset {preset.name} needs GPUs: choose a GPU "
            f"instance type (`kaito presets --skus` lists them), or let an operator admin "
            f"allow it ({ALLOW_NON_GPU})",
        )
    ]


def node_count_errors(
    ws: Workspace, preset: Preset | None, sku: Sku | None, limits: Limits
) -> list[FieldError]:
    """resource.count, or the nodes vLLM's estimate asks for, within the per-Workspace cap."""
    cap = limits.max_nodeclaims_per_workspace
    count = ws.node_count
    if ws.replicas > cap:
        # Replicas above 1 run one node each (the CRD refuses more nodes per replica).
        return [
            FieldError(
                "spec.replicas",
                f"{ws.replicas} replicas need {ws.replicas} nodes, more than the {cap} one "
                f"Workspace may ask for ({MAX_CLAIMS}): use an InferenceSet for more",
            )
        ]
    if count > cap:
        return [
            FieldError(
                "resource.count",
                f"{count} nodes is more than the {cap} one Workspace may ask for ({MAX_CLAIMS})",
            )
        ]
    if preset is not None and sku is not None and not ws.is_tuning:
        nodes = estimate_nodes(preset, sku, requested_count=count).nodes
        if nodes > cap:
            return [
                FieldError(
                    "resource.instanceType",
                    f"preset {preset.name} needs {nodes} x {sku.name}, more than the {cap} nodes "
                    f"one Workspace may ask for ({MAX_CLAIMS}): choose a larger GPU instance type",
                )
            ]
    return []


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for index, container in enumerate(spec.get(key) or []):
            if isinstance(container, Mapping):
                yield f"{key}[{index}]", container


def template_problems(template: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field under the template, what it asks) for each host-level privilege requested."""
    spec = template.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    found: list[tuple[str, str]] = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key) is True:
            found.append((f"spec.{key}", "shares the node's namespaces"))
    for index, volume in enumerate(spec.get("volumes") or []):
        if isinstance(volume, Mapping) and "hostPath" in volume:
            found.append((f"spec.volumes[{index}].hostPath", "mounts a path of the node"))
    for where, container in _containers(spec):
        context = container.get("securityContext")
        context = context if isinstance(context, Mapping) else {}
        if context.get("privileged") is True:
            found.append((f"spec.{where}.securityContext.privileged", "runs privileged"))
        capabilities = context.get("capabilities")
        if isinstance(capabilities, Mapping) and capabilities.get("add"):
            found.append(
                (f"spec.{where}.securityContext.capabilities.add", "adds Linux capabilities")
            )
    return found


def template_errors(ws: Workspace, limits: Limits) -> list[FieldError]:
    """A custom pod template may not ask for host access unless the operator allows it."""
    template = ws.inference.template if ws.inference is not None else None
    if not template or limits.allow_privileged_templates:
        return []
    return [
        FieldError(
            f"inference.template.{field}",
            f"the template {what}, which kaito refuses unless an operator admin allows it "
            f"({ALLOW_PRIVILEGED})",
        )
        for field, what in template_problems(template)
    ]


def limit_errors(
    ws: Workspace, preset: Preset | None, sku: Sku | None, limits: Limits
) -> list[FieldError]:
    """Every limit a Workspace exceeds."""
    return [
        *instance_type_errors(ws, preset, sku, limits),
        *node_count_errors(ws, preset, sku, limits),
        *template_errors(ws, limits),
    ]
