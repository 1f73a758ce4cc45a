"""Full Workspace admission: CRD rules plus the checks that need the preset and SKU catalog."""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from kaito.api.errors import FieldError
from kaito.api.validation import (
    ConfigMapLookup,
    check_structure,
    image_warnings,
    validate_config_maps,
    validate_metadata,
    validate_tuning_input,
    without_status,
)
from kaito.api.workspace import (
    ANNOTATION_BYPASS_RESOURCE_CHECKS,
    ANNOTATION_RUNTIME,
    DEFAULT_LORA_CONFIG,
    DEFAULT_QLORA_CONFIG,
    V1BETA1,
    Workspace,
    parse_workspace,
)
from kaito.contract.files import TRAINING_CONFIG_FILE
from kaito.presets.catalog import Catalog, Preset, default_catalog, select_runtime
from kaito.presets.estimator import (
    bypass_resource_checks,
    estimate_nodes,
    estimate_tuning_memory_gib,
    has_enough_total_memory,
)
from kaito.presets.limits import DEFAULT_LIMITS, Limits, limit_errors
from kaito.presets.skus import Sku, SkuTable, default_skus, is_azure_gpu_family

DEFAULT_RELEASE_NAMESPACE = "kaito-system"


@functools.cache
def default_tuning_config(method: str) -> str:
    """The shipped training_config.yaml text of lora-/qlora-params-template."""
    name = DEFAULT_QLORA_CONFIG if method.lower() == "qlora" else DEFAULT_LORA_CONFIG
    resource = importlib.resources.files("kaito.presets").joinpath(f"data/tuning/{name}.yaml")
    return resource.read_text()


def default_config_maps() -> dict[str, dict[str, str]]:
    """ConfigMap name -> data for the default tuning templates (what the chart installs)."""
    return {
        DEFAULT_LORA_CONFIG: {TRAINING_CONFIG_FILE: default_tuning_config("lora")},
        DEFAULT_QLORA_CONFIG: {TRAINING_CONFIG_FILE: default_tuning_config("qlora")},
    }


def _preset_field(workspace: Workspace) -> str:
    return "tuning.preset.name" if workspace.is_tuning else "inference.preset.name"


def suggest_skus(preset: Preset, skus: SkuTable, cloud: str | None, limit: int = 3) -> list[str]:
    """The smallest current instance types that hold the preset on one node."""
    candidates = [
        sku
        for sku in skus
        if (cloud is None or sku.cloud == cloud)
        and not sku.is_legacy
        and sku.compute_capability is not None
    ]
    fitting = [
        sku
        for sku in candidates
        if (estimate := estimate_nodes(preset, sku)).fits and estimate.nodes == 1
    ]
    fitting.sort(key=lambda s: (s.gpu_memory_gib, s.gpus, s.name))
    return [s.name for s in fitting[:limit]]


def _preset_errors(
    workspace: Workspace, catalog: Catalog
) -> tuple[Preset | None, list[FieldError]]:
    name = workspace.preset_name
    if name is None:
        return None, []
    field = _preset_field(workspace)
    preset = catalog.get(name)
    if preset is None:
        close = catalog.suggest(name)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return None, [
            FieldError(field, f"unknown preset {name!r}: {hint}run `kaito presets` to list presets")
        ]
    if preset.deprecated:
        return preset, [
            FieldError(
                field,
                f"preset {preset.name} is deprecated and no longer supported: choose another "
                "preset (`kaito presets`)",
            )
        ]
    return preset, []


def _tuning_errors(workspace: Workspace, preset: Preset, catalog: Catalog) -> list[FieldError]:
    assert workspace.tuning is not None
    if not preset.supports_tuning:
        tunable = ", ".join(p.name for p in catalog.tunable())
        return [
            FieldError(
                "tuning.preset.name",
                f"preset {preset.name} cannot be tuned: choose one of {tunable}",
            )
        ]
    method = workspace.tuning.method
    if not preset.supports_method(method):
        methods = ", ".join(preset.tuning.methods if preset.tuning else ())
        return [
            FieldError(
                "tuning.method",
                f"preset {preset.name} does not support {method}: use one of {methods}",
            )
        ]
    return []


def _inference_errors(
    workspace: Workspace, preset: Preset, *, vllm_enabled: bool
) -> list[FieldError]:
    assert workspace.inference is not None
    errors = []
    annotations = workspace.annotations
    requested = annotations.get(ANNOTATION_RUNTIME, "").strip().lower()
    runtime = select_runtime(preset, annotations, vllm_enabled=vllm_enabled)
    if requested in ("vllm", "transformers") and not preset.supports_runtime(requested):
        errors.append(
            FieldError(
                f"metadata.annotations[{ANNOTATION_RUNTIME}]",
                f"preset {preset.name} cannot run on {requested}: use "
                f"{' or '.join(preset.runtimes)}",
            )
        )
    elif not preset.supports_runtime(runtime):
        errors.append(
            FieldError(
                "inference.preset.name",
                f"preset {preset.name} needs the {preset.runtimes[0]} runtime, which is disabled "
                "in this operator: enable it or choose another preset",
            )
        )
    for i, adapter in enumerate(workspace.inference.adapters or []):
        if not preset.allow_lora:
            errors.append(
                FieldError(
                    f"inference.adapters[{i}]",
                    f"preset {preset.name} does not accept LoRA adapters: remove them",
                )
            )
        elif runtime == "vllm" and adapter.strength is not None:
            errors.append(
                FieldError(
                    f"inference.adapters[{i}].strength",
                    "vLLM does not support adapter strength: remove strength, or add annotation "
                    f"{ANNOTATION_RUNTIME}: transformers",
                )
            )
    spec = workspace.inference.preset
    if workspace.version == V1BETA1 and spec is not None:
        if (
            preset.download_auth_required
            and preset.download_at_runtime
            and not spec.model_access_secret
        ):
            errors.append(
                FieldError(
                    "inference.preset.modelAccessSecret",
                    f"preset {preset.name} needs a Hugging Face token: create a Secret with key "
                    "HF_TOKEN and name it here",
                )
            )
        if spec.model_access_secret and not preset.download_at_runtime:
            errors.append(
                FieldError(
                    "inference.preset.modelAccessSecret",
                    f"preset {preset.name} is not downloaded at runtime, so it takes no access "
                    "secret: remove modelAccessSecret",
                )
            )
    return errors


def _instance_errors(
    workspace: Workspace,
    preset: Preset | None,
    sku: Sku | None,
    skus: SkuTable,
    *,
    cloud_provider: str | None,
    vllm_enabled: bool,
) -> list[FieldError]:
    instance_type = workspace.instance_type
    if not instance_type or workspace.is_tuning:
        # Tuning has no GPU-memory check on purpose: upstream's hint would reject the
        # legacy V100 SKU; an unknown tuning SKU falls back to one GPU (a warning).
        return []
    field = "resource.instanceType"
    if sku is None:
        if cloud_provider in (None, "azure") and is_azure_gpu_family(instance_type):
            return []
        known = ", ".join(skus.names(cloud_provider, current_only=True)[:8])
        return [
            FieldError(
                field,
                f"unsupported instance type {instance_type!r}: use a known GPU SKU such as "
                f"{known} (`kaito presets --skus` lists all)",
            )
        ]
    if preset is None or bypass_resource_checks(workspace.annotations):
        return []
    bypass = f'or add annotation {ANNOTATION_BYPASS_RESOURCE_CHECKS}: "true"'
    count = workspace.node_count
    if not has_enough_total_memory(preset, sku, count):
        better = ", ".join(suggest_skus(preset, skus, sku.cloud)) or "a larger GPU instance"
        return [
            FieldError(
                field,
                f"insufficient total GPU memory: {count} x {sku.name} has "
                f"{count * sku.gpu_memory_gib:g} GiB, but preset {preset.name} needs at least "
                f"{preset.weights_gib:g} GiB; choose {better}, {bypass}",
            )
        ]
    runtime = select_runtime(preset, workspace.annotations, vllm_enabled=vllm_enabled)
    if runtime == "vllm":
        estimate = estimate_nodes(preset, sku, requested_count=count)
        if not estimate.fits:
            better = ", ".join(suggest_skus(preset, skus, sku.cloud)) or "a larger GPU instance"
            # The operator cannot run multi-node vLLM at all, so bypassing would not help.
            tail = "" if estimate.nodes > 1 else f", {bypass}"
            return [FieldError(field, f"{estimate.reason} (e.g. {better}){tail}")]
    return []


def _same_spec(body: Any, old: Any) -> bool:
    sections = ("resource", "inference", "tuning")
    if not isinstance(old, dict) or not isinstance(body, dict):
        return False
    return all(body.get(k) == old.get(k) for k in sections)


def admission_message(errors: list[FieldError]) -> str:
    """One message for an admission response: every error as `field: message`, joined."""
    return "; ".join(str(e) for e in errors if e.severity == "error")


def validate_workspace(
    body: Any,
    *,
    old: Any = None,
    catalog: Catalog | None = None,
    skus: SkuTable | None = None,
    cloud_provider: str | None = "azure",
    config_map_lookup: ConfigMapLookup | None = None,
    release_namespace: str = DEFAULT_RELEASE_NAMESPACE,
    vllm_enabled: bool = True,
    allowed_hosts: Collection[str] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> list[FieldError]:
    """Every admission error for a Workspace body (CREATE when old is None, else UPDATE).

    Pure: the catalog and SKU table default to the packaged ones, and ConfigMaps are read
    through `config_map_lookup(namespace, name)` (None skips those checks). Never raises for
    bad input; returns errors (severity "error") only. See `workspace_warnings` for warnings.
    """
    catalog = catalog or default_catalog()
    skus = skus or default_skus()
    body, old = without_status(body), without_status(old)
    workspace, errors = check_structure(body, old=old)
    if workspace is None:
        # The schema errors say what is wrong; nothing more can be checked.
        return errors
    if old is not None and _same_spec(body, old):
        # Controller writes (finalizer, annotations, status) must never be blocked by a
        # catalog that changed after the Workspace was admitted.
        return errors
    return errors + webhook_errors(
        workspace,
        catalog=catalog,
        skus=skus,
        cloud_provider=cloud_provider,
        config_map_lookup=config_map_lookup,
        release_namespace=release_namespace,
        vllm_enabled=vllm_enabled,
        allowed_hosts=allowed_hosts,
        limits=limits,
    )


def webhook_errors(
    workspace: Workspace,
    *,
    catalog: Catalog | None = None,
    skus: SkuTable | None = None,
    cloud_provider: str | None = "azure",
    config_map_lookup: ConfigMapLookup | None = None,
    release_namespace: str = DEFAULT_RELEASE_NAMESPACE,
    vllm_enabled: bool = True,
    allowed_hosts: Collection[str] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> list[FieldError]:
    """What only the webhook checks (the CRD cannot): names, catalog, SKUs, limits, inputs and
    ConfigMaps, on a parsed Workspace. The planner runs it again before acting, so an object
    that got past a missing webhook is still refused."""
    catalog = catalog or default_catalog()
    skus = skus or default_skus()
    errors: list[FieldError] = []
    errors += validate_metadata(workspace)
    errors += validate_tuning_input(workspace, allowed_hosts)
    preset, preset_errors = _preset_errors(workspace, catalog)
    errors += preset_errors
    if preset is not None and not preset_errors:
        if workspace.tuning is not None:
            errors += _tuning_errors(workspace, preset, catalog)
        elif workspace.inference is not None:
            errors += _inference_errors(workspace, preset, vllm_enabled=vllm_enabled)
    sku = skus.get(workspace.instance_type, cloud_provider) if workspace.instance_type else None
    errors += _instance_errors(
        workspace,
        preset if not preset_errors else None,
        sku,
        skus,
        cloud_provider=cloud_provider,
        vllm_enabled=vllm_enabled,
    )
    # The operator's limits (presets/limits.py); a field already refused says enough.
    limited = limit_errors(workspace, preset if not preset_errors else None, sku, limits)
    errors += [e for e in limited if all(e.field != x.field for x in errors)]
    if config_map_lookup is not None:
        errors += validate_config_maps(
            workspace,
            config_map_lookup,
            release_namespace=release_namespace,
            max_context_length=preset.context_length if preset else None,
        )
    return errors


def workspace_warnings(
    body: Any,
    *,
    catalog: Catalog | None = None,
    skus: SkuTable | None = None,
    cloud_provider: str | None = "azure",
) -> list[FieldError]:
    """Admissible-but-suspicious things: unknown SKU fallback, non-Docker image names, and
    tuning that likely exceeds the GPU memory (a warning only, for legacy compatibility)."""
    skus = skus or default_skus()
    try:
        workspace = parse_workspace(without_status(body))
    except (ValidationError, TypeError, ValueError, AttributeError):
        return []
    warnings = image_warnings(workspace)
    instance_type = workspace.instance_type
    sku = skus.get(instance_type, cloud_provider) if instance_type else None
    preset = (catalog or default_catalog()).get(workspace.preset_name or "")
    if workspace.tuning is not None and sku is not None and preset is not None:
        need = estimate_tuning_memory_gib(preset, workspace.tuning.method)
        have = sku.gpu_memory_per_gpu_gib
        if 0 < have < need:
            hint = "use qlora or " if workspace.tuning.method == "lora" else ""
            warnings.append(
                FieldError(
                    "resource.instanceType",
                    f"{workspace.tuning.method} tuning of {preset.name} needs about "
                    f"{need:.0f} GiB per GPU, but {sku.name} has {have:g} GiB: {hint}choose a "
                    "larger GPU if the job runs out of memory",
                    severity="warning",
                )
            )
    if instance_type and sku is None:
        warnings.append(
            FieldError(
                "resource.instanceType",
                f"{instance_type!r} is not in kaito's SKU table: assuming 1 GPU per node and "
                "skipping GPU-memory checks",
                severity="warning",
            )
        )
    return warnings


def offline_config_map_lookup(
    extra: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
) -> ConfigMapLookup:
    """A lookup that knows the default templates (any namespace) plus `extra` ConfigMaps."""
    defaults = default_config_maps()
    known = dict(extra or {})

    def lookup(namespace: str, name: str) -> Mapping[str, str] | None:
        if (namespace, name) in known:
            return known[(namespace, name)]
        return defaults.get(name)

    return lookup
