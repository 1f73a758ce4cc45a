"""Which existing objects the controller may write: ownership checks and write failures."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kaito.manifests.keys import LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE

JSON = dict[str, Any]
MANAGED_BY = "app.kubernetes.io/managed-by"
# Labels that mark an object as kaito's when it cannot carry an ownerReference to one
# Workspace: cluster-scoped NodeClaims (workspace labels) and the objects the tuning
# Workspaces of a namespace share (managed-by).
CLAIM_LABELS = (LABEL_WORKSPACE, LABEL_WORKSPACE_NAMESPACE, MANAGED_BY)


@dataclass(frozen=True)
class Owner:
    """The Workspace on whose behalf a write happens: its UID, name and namespace."""

    uid: str
    name: str
    namespace: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Owner:
        meta = body.get("metadata") or {}
        return cls(str(meta.get("uid") or ""), str(meta.get("name")), str(meta.get("namespace")))


def describe(obj: Mapping[str, Any]) -> str:
    """`Kind namespace/name` (or `Kind name` for cluster-scoped objects), for messages."""
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', 'object')} {where}{meta.get('name')}"


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The UID in the object's controller ownerReference, if it has one."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid") or "")
    return None


def holder(obj: Mapping[str, Any]) -> str:
    """Who an existing object belongs to, in words, for a conflict message."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return f"is controlled by {ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})"
    labels = meta.get("labels") or {}
    if labels.get(LABEL_WORKSPACE):
        where = labels.get(LABEL_WORKSPACE_NAMESPACE)
        owner = f"{where}/{labels[LABEL_WORKSPACE]}" if where else labels[LABEL_WORKSPACE]
        return f"is labelled for Workspace {owner}"
    return "was not created by kaito"


def owns(existing: Mapping[str, Any], desired: Mapping[str, Any], owner: Owner) -> bool:
    """May the controller write over `existing` on behalf of `owner`?

    An object that names a controller in `desired` must already name the same controller
    (the Workspace's UID). Objects without one (NodeClaims, shared tuning objects) must
    carry the same identifying labels the desired object carries.
    """
    if controller_uid(desired) is not None:
        return controller_uid(existing) == owner.uid and bool(owner.uid)
    if controller_uid(existing) is not None:
        return False
    want = (desired.get("metadata") or {}).get("labels") or {}
    have = (existing.get("metadata") or {}).get("labels") or {}
    keys = [key for key in CLAIM_LABELS if key in want]
    return bool(keys) and all(have.get(key) == want[key] for key in keys)


def owned_for_delete(existing: Mapping[str, Any], owner: Owner) -> bool:
    """May the controller delete `existing` for `owner`: its controller is the Workspace, or
    (cluster-scoped NodeClaims) its labels name the Workspace."""
    uid = controller_uid(existing)
    if uid is not None:
        return uid == owner.uid and bool(owner.uid)
    labels = (existing.get("metadata") or {}).get("labels") or {}
    return (
        labels.get(LABEL_WORKSPACE) == owner.name
        and labels.get(LABEL_WORKSPACE_NAMESPACE) == owner.namespace
    )


class NameConflictError(Exception):
    """An object the Workspace needs is taken by something it does not own."""

    reason = "NameConflict"

    def __init__(self, existing: Mapping[str, Any], owner: Owner) -> None:
        self.object = describe(existing)
        self.kind = str(existing.get("kind") or "object")
        self.owner = owner
        self.message = (
            f"{self.object} already exists and {holder(existing)}; kaito does not adopt or "
            f"change it: rename or delete it, or rename Workspace {owner.name}"
        )
        super().__init__(self.message)


# API status codes -> condition reasons for a failed child write.
WRITE_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Gone",
    422: "Invalid",
    429: "TooManyRequests",
}


class ChildWriteError(Exception):
    """Applying or deleting one child failed at the API: carries the object and its message."""

    def __init__(self, action: str, obj: Mapping[str, Any], code: int, api_message: str) -> None:
        self.action = action
        self.object = describe(obj)
        self.code = code
        self.api_message = api_message
        quota = code == 403 and "exceeded quota" in api_message
        self.reason = "QuotaExceeded" if quota else WRITE_REASONS.get(code, "ApiError")
        self.message = f"{action} {self.object} failed ({code}): {api_message}"
        super().__init__(self.message)

    @property
    def retryable(self) -> bool:
        """Worth an early retry (conflicts, throttling, server errors); the rest waits for a
        change, with the error backoff."""
        return self.code in (409, 429) or self.code >= 500
