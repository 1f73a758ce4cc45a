"""Resolve a Workspace once (preset, SKU, runtime, node count, revision) for all builders."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kaito.api.workspace import Workspace
from kaito.manifests.errors import SpecError
from kaito.manifests.keys import RESERVED_LABEL_KEYS
from kaito.manifests.options import ClusterOptions
from kaito.presets import Preset, Sku, default_catalog, default_skus, select_runtime
from kaito.presets.catalog import Runtime
from kaito.presets.estimator import estimate_nodes, target_node_count, tuning_gpu_count


@dataclass(frozen=True)
class WorkspaceContext:
    """Everything the builders need, resolved from one Workspace and the cluster options."""

    workspace: Workspace
    options: ClusterOptions
    preset: Preset | None  # None: a custom inference template
    sku: Sku
    runtime: Runtime
    target_node_count: int
    gpus_per_node: int
    revision: str
    spec_hash: str
    # A CPU preset on nodes without a known GPU (no instance type, or a CPU one): the pods
    # ask for CPU and memory instead of nvidia.com/gpu, and any ready matching node will do.
    on_cpu: bool = False

    @property
    def name(self) -> str:
        return self.workspace.name

    @property
    def namespace(self) -> str:
        return self.workspace.namespace

    @property
    def match_labels(self) -> dict[str, str]:
        return selector_labels(self.workspace)


def selector_labels(workspace: Workspace) -> dict[str, str]:
    """The user's node selector as a label map, without kaito's reserved keys (upstream §3.1)."""
    if workspace.resource is None:
        return {}
    labels = workspace.resource.label_selector.as_map()
    return {k: v for k, v in sorted(labels.items()) if k not in RESERVED_LABEL_KEYS}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def spec_hash(workspace: Workspace) -> str:
    """sha256 over resource, inference and tuning, each JSON followed by a newline (upstream)."""
    body = workspace.to_body()
    digest = hashlib.sha256()
    for part in ("resource", "inference", "tuning"):
        digest.update((canonical_json(body.get(part)) + "\n").encode())
    return digest.hexdigest()


def resolve_preset(workspace: Workspace) -> Preset | None:
    """The workspace's catalog preset; None for a custom template; SpecError when unknown."""
    name = workspace.preset_name
    if name is None:
        if workspace.inference is not None and workspace.inference.template is not None:
            return None
        raise SpecError(
            "InvalidWorkspaceSpec", "set inference.preset, inference.template or tuning.preset"
        )
    preset = default_catalog().get(name)
    if preset is None:
        hint = ", ".join(default_catalog().suggest(name)) or "see `kaito presets`"
        raise SpecError("PresetNotFound", f"preset {name!r} is not in the catalog (try: {hint})")
    if workspace.tuning is not None and not preset.supports_method(workspace.tuning.method):
        raise SpecError(
            "PresetNotTunable",
            f"preset {preset.name!r} cannot be tuned with {workspace.tuning.method}; "
            "choose a tunable preset (`kaito presets`)",
        )
    return preset


def compute_target_node_count(
    workspace: Workspace,
    preset: Preset | None,
    sku: Sku,
    runtime: Runtime,
    *,
    max_model_len: int | None = None,
) -> int:
    """Nodes the workspace needs: tuning 1, transformers `count`, vLLM the estimator."""
    if preset is not None and runtime == "vllm" and not workspace.is_tuning:
        estimate = estimate_nodes(
            preset, sku, max_model_len=max_model_len, requested_count=workspace.node_count
        )
        if not estimate.fits:
            code = "MultiNodeUnsupported" if estimate.nodes > 1 else "InsufficientGPUMemory"
            raise SpecError(code, estimate.reason)
    return target_node_count(workspace, preset, sku, runtime, max_model_len=max_model_len)


def resolve(
    workspace: Workspace,
    options: ClusterOptions,
    *,
    target_nodes: int | None = None,
    max_model_len: int | None = None,
    node_gpus: int | None = None,
    revision: str = "1",
) -> WorkspaceContext:
    """Resolve the workspace; `target_nodes` is the frozen status value when already set.

    `node_gpus` is the GPU count of the existing nodes (BYO mode, from their labels); it
    wins over the SKU table because the pods must fit the nodes they land on.
    """
    preset = resolve_preset(workspace)
    sku = default_skus().resolve(workspace.instance_type or "", options.cloud_provider)
    # A node without a known GPU (a CPU instance type, or an unknown one for a CPU preset)
    # gets the CPU engine for presets with GGUF weights, and CPU requests for a CPU preset.
    gpu_node = bool(node_gpus) or (sku.known and sku.gpus > 0)
    runtime: Runtime = (
        select_runtime(
            preset,
            workspace.annotations,
            vllm_enabled=options.vllm_enabled,
            gpu_node=gpu_node,
        )
        if preset is not None and not workspace.is_tuning
        else "transformers"
    )
    count = target_nodes or compute_target_node_count(
        workspace, preset, sku, runtime, max_model_len=max_model_len
    )
    if runtime == "vllm" and preset is not None and count > 1:
        # A count frozen in status before single-node vLLM became the rule.
        raise SpecError(
            "MultiNodeUnsupported",
            f"{preset.name} was placed on {count} nodes of {sku.name}, but vLLM runs on one "
            "node: choose an instance type that holds it on one node (`kaito presets`)",
        )
    gpus = node_gpus if node_gpus else tuning_gpu_count(sku)
    return WorkspaceContext(
        workspace=workspace,
        options=options,
        preset=preset,
        sku=sku,
        runtime=runtime,
        target_node_count=max(count, 1),
        gpus_per_node=max(gpus, 1),
        revision=revision,
        spec_hash=spec_hash(workspace),
        on_cpu=preset is not None and preset.cpu and not gpu_node,
    )
