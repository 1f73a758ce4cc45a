"""InferenceSet I/O: observe its Workspaces and Service, write them and its status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType

from kaito.api.inferenceset import LABEL_INFERENCESET
from kaito.k8s.client import Kube
from kaito.k8s.ownership import Owner, controller_uid
from kaito.k8s.resources import InferenceSet, Workspace
from kaito.reconcile.inferenceset import SetPlan

JSON = dict[str, Any]


async def observe_set(kube: Kube, body: Mapping[str, Any]) -> tuple[list[JSON], JSON | None]:
    """The Workspaces this set controls (by label and controller UID) and its Service."""
    meta = body.get("metadata") or {}
    namespace, name, uid = str(meta.get("namespace")), str(meta.get("name")), meta.get("uid")
    labelled = await kube.list_json(
        Workspace, namespace=namespace, labels={LABEL_INFERENCESET: name}
    )
    # A Workspace carrying the label but controlled by someone else is never touched.
    mine = [ws for ws in labelled if controller_uid(ws) == uid]
    service = await kube.get(Service, name, namespace)
    return mine, service


async def execute_set(kube: Kube, body: Mapping[str, Any], plan: SetPlan) -> None:
    """Apply, delete (only what the set controls), then write the status."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    owner = Owner.of(body)
    for obj in plan.apply:
        await kube.apply(obj, owner)
    for ref in plan.delete:
        await kube.delete(ref, owner)
    if plan.status is not None:
        old = body.get("status") or {}
        patch = {**{key: None for key in old if key not in plan.status}, **plan.status}
        await kube.client.patch(
            InferenceSet.Status,
            name,
            {"status": patch},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
