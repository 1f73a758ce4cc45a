"""Which ConfigMaps the shell reads for one Workspace (what it observes is types.Observed)."""

from __future__ import annotations

from kaito.api.workspace import Workspace
from kaito.manifests.inference import default_config_map_name
from kaito.manifests.options import ClusterOptions


def wanted_config_maps(workspace: Workspace, options: ClusterOptions) -> list[tuple[str, str]]:
    """The ConfigMaps the planner reads: the user's config, the tuning template (both
    namespaces) or the workspace's default inference config."""
    if workspace.tuning is not None:
        name = workspace.tuning.config_map_name
        if workspace.tuning.config:
            return [(workspace.namespace, name)]
        return [(workspace.namespace, name), (options.release_namespace, name)]
    if workspace.inference is not None and workspace.inference.config:
        return [(workspace.namespace, workspace.inference.config)]
    if workspace.inference is not None and workspace.inference.template is None:
        return [(workspace.namespace, default_config_map_name(workspace.name))]
    return []
