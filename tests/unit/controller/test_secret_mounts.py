"""Registry credentials are mounted where the runtime's non-root user can read them.

Seen on a real node: the pusher ran as uid 10001, its push secret was mounted under /root/.docker,
the directory it cannot enter, so it pushed without credentials and the registry refused it.
"""

from __future__ import annotations

from typing import Any

from kaito.api.workspace import parse_workspace
from kaito.contract.files import DOCKER_CONFIG_DIR
from kaito.manifests.context import resolve
from kaito.manifests.inference import build_statefulset
from kaito.manifests.options import ClusterOptions
from kaito.manifests.tuning import build_job
from tests.unit.controller.builders import make_workspace, stored
from tests.unit.controller.test_cpu_placement import REAL, SMALL, small_tuning

JSON = dict[str, Any]


def secret_mounts(pod: JSON) -> list[str]:
    """Mount paths of every volume built from a Secret (directly or projected)."""
    secret_volumes = {
        v["name"]
        for v in pod.get("volumes", [])
        if "secret" in v
        or any("secret" in source for source in (v.get("projected") or {}).get("sources", []))
    }
    return [
        m["mountPath"]
        for c in [*pod.get("initContainers", []), *pod["containers"]]
        for m in c.get("volumeMounts", [])
        if m["name"] in secret_volumes
    ]


def test_push_pull_and_weights_secrets_are_mounted_outside_root() -> None:
    options = ClusterOptions(
        preset_registry="10.245.0.1:5001", preset_pull_secrets=("mirror-pull",)
    )
    tuning = small_tuning()
    tuning["tuning"]["input"] = {"image": "10.245.0.1:5001/data:1", "imagePullSecrets": ["data"]}
    job = build_job(resolve(parse_workspace(tuning), options))["spec"]["template"]["spec"]
    serve = make_workspace("served").inference(SMALL).match_labels(**REAL).obj()
    serve["inference"]["adapters"] = [
        {"source": {"name": "a", "image": "10.245.0.1:5001/a:1", "imagePullSecrets": ["a"]}}
    ]
    served = build_statefulset(resolve(parse_workspace(stored(serve)), options))
    pod = served["spec"]["template"]["spec"]
    mounts = secret_mounts(job) + secret_mounts(pod)
    # push secret, input pull secret, adapter pull secret, weights pull secret (twice)
    assert len(mounts) >= 5, mounts
    for path in mounts:
        assert path.startswith(f"{DOCKER_CONFIG_DIR}/") or path == DOCKER_CONFIG_DIR, path
        assert not path.startswith("/root"), path
    args = " ".join(a for c in job["containers"] for a in c.get("args", []))
    assert f"--docker-config={DOCKER_CONFIG_DIR}/config.json" in args
