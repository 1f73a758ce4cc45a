"""ControllerRevisions: one per distinct Workspace spec, so a reverted spec reuses its number."""

from __future__ import annotations

from kaito.api.workspace import Workspace
from kaito.manifests.common import JSON, owner_reference
from kaito.manifests.keys import ANNOTATION_HASH

LABEL_REVISION_OWNER = "workspace.kaito.io/name"
MAX_REVISIONS = 10


def revision_name(workspace: Workspace, digest: str) -> str:
    """`<ws>-<first 5 hex of the spec hash>` (upstream §7 step 4)."""
    return f"{workspace.name}-{digest[:5]}"


def build_controller_revision(workspace: Workspace, digest: str, revision: int) -> JSON:
    body = workspace.to_body()
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": revision_name(workspace, digest),
            "namespace": workspace.namespace,
            "labels": {LABEL_REVISION_OWNER: workspace.name},
            "annotations": {ANNOTATION_HASH: digest},
            "ownerReferences": [owner_reference(workspace)],
        },
        "data": {part: body.get(part) for part in ("resource", "inference", "tuning")},
        "revision": revision,
    }
