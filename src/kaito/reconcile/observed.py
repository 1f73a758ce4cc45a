"""What the shell observed in the cluster for one Workspace, as plain JSON objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kaito.api.workspace import Workspace
from kaito.manifests.inference import default_config_map_name
from kaito.manifests.options import ClusterOptions

JSON = dict[str, Any]


@dataclass(frozen=True)
class Observed:
    """Children and nodes as the apiserver returned them (no interpretation here).

    - nodeclaims: NodeClaims labelled with this workspace (and its namespace).
    - nodes: every Node (the planner picks the matching ones).
    - statefulset, job: `<ws>` in the workspace namespace, or None.
    - results_claim: the tuning results PVC `<ws>-results`, or None.
    - preflight_job: the tuning preflight Job `<ws>-preflight`, or None.
    - services: the workspace's Services.
    - pods: pods labelled `kaito.sh/workspace=<ws>`.
    - config_maps: (namespace, name) -> data for each ConfigMap in `wanted_config_maps`
      that exists.
    - revisions: ControllerRevisions labelled `workspace.kaito.io/name=<ws>`.
    - config_maps_seen: which ConfigMaps this observation tried to read (a missing key in
      config_maps then means "does not exist", not "not looked at").
    """

    nodeclaims: tuple[JSON, ...] = ()
    nodes: tuple[JSON, ...] = ()
    statefulset: JSON | None = None
    job: JSON | None = None
    results_claim: JSON | None = None
    preflight_job: JSON | None = None
    services: tuple[JSON, ...] = ()
    pods: tuple[JSON, ...] = ()
    config_maps: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)
    config_maps_seen: frozenset[tuple[str, str]] = frozenset()
    revisions: tuple[JSON, ...] = ()

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        return self.config_maps.get((namespace, name))


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
