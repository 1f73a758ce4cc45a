"""What a kubelet would report for pods that kwok does not run (the tuning preflight)."""

from __future__ import annotations

import json
from typing import Any

from kaito.devcluster import ApiClient

JSON = dict[str, Any]
PASSED = {"ok": True, "train_rows": 16, "eval_rows": 2, "file_count": 1, "tokens": {"mean": 48.0}}


def preflight_pods(api: ApiClient, namespace: str, workspace: str) -> list[JSON]:
    selector = f"kaito.sh/workspace={workspace},kaito.sh/tuning-stage=preflight"
    found: list[JSON] = api.request(
        "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": selector}
    )["items"]
    return found


def terminate(api: ApiClient, pod: JSON, message: str, exit_code: int) -> None:
    """Patch the pod's status as its kubelet would after the container exited."""
    meta = pod["metadata"]
    container = pod["spec"]["containers"][0]
    status = {
        "phase": "Failed" if exit_code else "Succeeded",
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Error" if exit_code else "Completed",
                        "message": message,
                    }
                },
            }
        ],
    }
    api.request(
        "PATCH",
        f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
        {"status": status},
        content_type="application/merge-patch+json",
    )


def finish_preflight(
    api: ApiClient,
    namespace: str,
    workspace: str,
    result: JSON | None = None,
    *,
    exit_code: int = 0,
    timeout_s: float = 60.0,
) -> JSON:
    """Wait for the workspace's preflight pod, then end it with `result` as its message."""
    pod = api.wait_for(
        lambda: next(iter(preflight_pods(api, namespace, workspace)), None),
        timeout_s=timeout_s,
        what="the preflight pod",
    )
    terminate(api, pod, json.dumps(result or PASSED), exit_code)
    return pod
