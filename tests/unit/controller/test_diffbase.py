"""The lean kopf diff base: the same essence as kopf's, built without copying what it drops."""

from __future__ import annotations

from typing import Any, cast

import kopf

from kaito.operator.handlers import LeanDiffBaseStorage

KEY = "last-handled-configuration"


def workspace() -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {
            "name": "ws",
            "namespace": "ns",
            "uid": "u",
            "resourceVersion": "9",
            "generation": 2,
            "labels": {"team": "a"},
            "annotations": {
                "kaito.sh/last-handled-configuration": '{"old": 1}',
                "kaito.sh/revision": "1",
            },
            "finalizers": ["workspace.finalizer.kaito.sh"],
            "managedFields": [{"manager": "kaito", "fieldsV1": {"f:status": {}}}],
        },
        "resource": {"instanceType": "Standard_NC12s_v3", "labelSelector": {}},
        "inference": {"preset": {"name": "falcon-7b"}},
        "status": {"conditions": [{"type": "WorkspaceSucceeded", "status": "True"}]},
    }


def test_the_essence_is_kopfs_own() -> None:
    lean = LeanDiffBaseStorage(prefix="kaito.sh", key=KEY)
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix="kaito.sh", key=KEY)
    body = kopf.Body(cast(kopf.RawBody, workspace()))
    essence = lean.build(body=body)
    assert essence == kopfs.build(body=body)
    assert "status" not in essence
    assert essence["metadata"] == {
        "labels": {"team": "a"},
        "annotations": {"kaito.sh/revision": "1"},
    }


def test_a_changed_spec_changes_the_essence_and_a_status_does_not() -> None:
    lean = LeanDiffBaseStorage(prefix="kaito.sh", key=KEY)
    before = lean.build(body=kopf.Body(cast(kopf.RawBody, workspace())))
    changed = workspace()
    changed["inference"]["preset"]["name"] = "phi-3"
    unchanged = workspace()
    unchanged["status"] = {"conditions": []}
    unchanged["metadata"]["resourceVersion"] = "10"
    assert lean.build(body=kopf.Body(cast(kopf.RawBody, changed))) != before
    assert lean.build(body=kopf.Body(cast(kopf.RawBody, unchanged))) == before
