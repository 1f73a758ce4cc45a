"""ControllerRevisions: the spec's revision number, the history to keep and to prune."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kaito.api.workspace import Workspace
from kaito.manifests.keys import ANNOTATION_HASH, ANNOTATION_REVISION
from kaito.manifests.revision import MAX_REVISIONS, build_controller_revision
from kaito.reconcile.common import annotations_of
from kaito.reconcile.nodes import deleting, name_of
from kaito.reconcile.types import JSON, ObjectRef


@dataclass(frozen=True)
class Revision:
    """The revision number, the workspace annotations to write (empty when unchanged), and
    the ControllerRevisions to create and delete."""

    number: str
    annotations: dict[str, str]
    apply: tuple[JSON, ...]
    delete: tuple[ObjectRef, ...]


def revision_number(obj: Mapping[str, Any]) -> int:
    value = obj.get("revision")
    return int(value) if isinstance(value, int) else 0


def plan_revision(
    body: Mapping[str, Any], ws: Workspace, digest: str, observed: Sequence[JSON]
) -> Revision:
    """The spec's revision number (a known spec keeps its number), the ControllerRevision to
    create for a new spec, the oldest ones beyond MAX_REVISIONS to delete, and the workspace
    annotations to write when they changed (upstream §7 step 4)."""
    annotations = annotations_of(body)
    current = annotations.get(ANNOTATION_REVISION, "")
    live = [r for r in observed if not deleting(r)]
    match = next(
        (
            r
            for r in live
            if ((r.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_HASH) == digest
        ),
        None,
    )
    apply: list[JSON] = []
    if match is not None:
        number = revision_number(match)
    elif live:
        number = max(revision_number(r) for r in live) + 1
    elif annotations.get(ANNOTATION_HASH) == digest and current.isdigit():
        number = int(current)
    else:
        number = int(current) + 1 if current.isdigit() else 1
    if match is None:
        apply.append(build_controller_revision(ws, digest, number))
    kept = sorted(live, key=revision_number)
    excess = len(kept) + len(apply) - MAX_REVISIONS
    delete = tuple(
        ObjectRef("apps/v1", "ControllerRevision", name_of(r), ws.namespace)
        for r in [r for r in kept if r is not match][: max(0, excess)]
    )
    wanted = {ANNOTATION_HASH: digest, ANNOTATION_REVISION: str(number)}
    changed = {k: v for k, v in wanted.items() if annotations.get(k) != v}
    return Revision(str(number), wanted if changed else {}, tuple(apply), delete)
