"""The planner's vocabulary: what it reads (Observed) and answers (Plan, ObjectRef, Event)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kaito.manifests.errors import SpecError
from kaito.reconcile.conditions import Cond

JSON = dict[str, Any]

# (kind, name) of an object in Plan.apply.
Subject = tuple[str, str]


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


@dataclass(frozen=True)
class ObjectRef:
    """An object to delete; `propagation` is the deletion propagation policy."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None
    propagation: str = "Background"


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the Workspace.

    `subject` is the (kind, name) of the object in Plan.apply that the event announces
    (e.g. a NodeClaim being created): the executor sends it only once that object was
    applied, so a failed create never reports a creation.
    """

    type: str
    reason: str
    message: str
    subject: Subject | None = None


@dataclass(frozen=True)
class Plan:
    """The planner's answer. `status` is None when nothing in the status changed."""

    apply: tuple[JSON, ...] = ()
    delete: tuple[ObjectRef, ...] = ()
    status: JSON | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    error: SpecError | None = None

    @property
    def idle(self) -> bool:
        """Nothing to write: the cluster already matches the workspace."""
        return not (self.apply or self.delete or self.status or self.annotations or self.events)


@dataclass(frozen=True)
class Work:
    """What one workload planner (inference, tuning, preflight) adds to the pass."""

    apply: tuple[JSON, ...] = ()
    delete: tuple[ObjectRef, ...] = ()
    conds: tuple[Cond, ...] = ()
    events: tuple[Event, ...] = ()
    requeue: float | None = None
    state: str | None = None
    tuning: JSON | None = None
