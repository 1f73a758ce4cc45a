"""The user's whole path on real pods: serve the CPU preset, tune it, serve the adapter, delete.

Everything a user would meet is real: the chart's operator runs as a Pod on the real node
(`operator_release`), the runtime image is the one `kaito dev images build` made, the preset's
weights are packaged into a registry with `kaito models package`, the training data is a URL
served on the node bridge, the adapter is pushed with an `imagePushSecret` to a registry that
demands credentials, and the official `openai` client talks to the Workspace's Service.

Traffic stays on this machine: loopback, the node bridge (10.245.0.0/24) and the Service range.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kaito.cli.demo import DEMO_QUESTION, EXPECTED_FACT
from kaito.devcluster.realnode import NODE_IP, NODE_LABEL, RealNode
from tests.e2e.conftest import PRESET, PodRelease
from tests.support.registry import free_port

pytestmark = [pytest.mark.slow]

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "local"
# Cold, the 5 GB runtime image is pulled and unpacked on the node first (minutes); warm, a
# server is Ready in well under a minute.
READY_S = 900
TUNING_S = 900
GONE_S = 180
SECRET = "adapter-push"
CONFIG_MAP = "velora-tuning"
NODECLAIMS = "/apis/karpenter.sh/v1/nodeclaims"


@pytest.fixture(scope="module")
def dataset_url(real_node: RealNode) -> Iterator[str]:
    """examples/local/data over HTTP on the node bridge address (pods reach it, nothing else)."""
    handler = functools.partial(_QuietHandler, directory=str(EXAMPLES / "data"))
    server = http.server.ThreadingHTTPServer((NODE_IP, free_port(NODE_IP)), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{NODE_IP}:{server.server_address[1]}/velora-mistlight.jsonl"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def results_volume(operator_release: PodRelease, real_node: RealNode) -> Iterator[str]:
    """A PersistentVolume for the tuning Job's results claim, as a platform team without a
    storage provisioner would give one: a directory on the real node, statically bound."""
    from kaito.devcluster import kaito_home

    name = f"{operator_release.workloads}-results"
    directory = kaito_home() / "e2e-volumes" / name
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o777)  # the tuner runs as a non-root user
    on_the_node = {"key": "metadata.name", "operator": "In", "values": [real_node.name]}
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": str(directory), "type": "Directory"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchFields": [on_the_node]}]}},
        },
    }
    operator_release.api.create(volume)
    try:
        yield name
    finally:
        operator_release.api.delete(volume)
        shutil.rmtree(directory, ignore_errors=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def workspace(name: str, namespace: str, body: JSON) -> JSON:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"labelSelector": {"matchLabels": {NODE_LABEL: "true"}}},
        **body,
    }


def apply(release: PodRelease, obj: JSON) -> None:
    release.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))


def condition(ws: JSON, kind: str) -> JSON:
    for cond in (ws.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def wait_for_condition(
    release: PodRelease,
    name: str,
    kind: str,
    timeout_s: float,
    *,
    seen: Callable[[JSON], None] | None = None,
) -> JSON:
    """The Workspace once `kind` is True; fails with its status and pods when it turns False
    for good (a Failed tuning job) or the time runs out."""
    path = f"/apis/kaito.sh/v1beta1/namespaces/{release.workloads}/workspaces/{name}"
    deadline = time.monotonic() + timeout_s
    last: JSON = {}
    while time.monotonic() < deadline:
        last = release.api.get(path)
        if seen is not None:
            seen(last)
        cond = condition(last, kind)
        if cond.get("status") == "True":
            return last
        if (last.get("status") or {}).get("state") == "Failed":
            break
        time.sleep(3)
    raise AssertionError(
        f"{name}: {kind} not True\nstatus: {json.dumps(last.get('status'), indent=1)}\n"
        f"{describe_pods(release)}"
    )


def describe_pods(release: PodRelease) -> str:
    pods = release.kubectl(
        f"--namespace={release.workloads}", "get", "pods", "-o", "wide", check=False
    ).stdout
    events = release.kubectl(
        f"--namespace={release.workloads}",
        "get",
        "events",
        "--sort-by=.lastTimestamp",
        check=False,
    ).stdout
    logs = release.kubectl(
        f"--namespace={release.workloads}",
        "logs",
        "--all-containers",
        "--tail=30",
        "--prefix",
        "-l",
        "kaito.sh/workspace",
        check=False,
    ).stdout
    return f"{pods}\n{events[-4000:]}\n{logs[-6000:]}\noperator:\n{release.logs()[-3000:]}"


def service_url(release: PodRelease, name: str) -> str:
    service = release.api.get(f"/api/v1/namespaces/{release.workloads}/services/{name}")
    cluster_ip = service["spec"]["clusterIP"]
    port = service["spec"]["ports"][0]["port"]
    return f"http://{cluster_ip}:{port}"


def ask(url: str, model: str, question: str = DEMO_QUESTION) -> str:
    """One greedy chat completion through the official client (bounded: one request, 120 s)."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=2)
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=48,
    )
    return reply.choices[0].message.content or ""


def push_secret(release: PodRelease) -> JSON:
    registry = release.registries.adapters
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    config = {"auths": {registry.host: {"auth": token}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": release.workloads},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


def ours(release: PodRelease, path: str) -> list[JSON]:
    """Cluster-scoped objects made for this namespace's Workspaces (other tests' NodeClaims in
    the same session are not this test's business)."""
    selector = f"kaito.sh/workspacenamespace={release.workloads}"
    items: list[JSON] = release.api.request("GET", path, query={"labelSelector": selector})["items"]
    return items


def leftovers(release: PodRelease) -> list[str]:
    """Objects the workspaces created that still exist (the user's own Secret and ConfigMap,
    and the namespace's root CA, are not ours to delete)."""
    namespace = release.workloads
    namespaced = (
        f"/api/v1/namespaces/{namespace}/pods",
        f"/api/v1/namespaces/{namespace}/services",
        f"/api/v1/namespaces/{namespace}/configmaps",
        f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
        f"/apis/batch/v1/namespaces/{namespace}/jobs",
        f"/apis/apps/v1/namespaces/{namespace}/statefulsets",
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
    )
    listed = [(path, release.api.get(path)["items"]) for path in namespaced]
    listed.append((NODECLAIMS, ours(release, NODECLAIMS)))
    found: list[str] = []
    for path, items in listed:
        for item in items:
            name = item["metadata"]["name"]
            if name in (CONFIG_MAP, "kube-root-ca.crt"):
                continue
            found.append(f"{path.rsplit('/', 1)[1]}/{name}")
    return found


# The whole path takes 2.5 minutes on a quiet 2-core machine (the tuning Job, 10 steps, is
# 1.5 of them) and several times that under load; pyproject.toml's per-test limit is for
# single steps.
@pytest.mark.timeout(READY_S + TUNING_S + READY_S + GONE_S)
def test_serve_tune_and_serve_the_adapter_on_real_pods(
    operator_release: PodRelease,
    real_node: RealNode,
    weights_image: str,
    dataset_url: str,
    results_volume: str,
) -> None:
    release, namespace = operator_release, operator_release.workloads
    started = time.monotonic()

    def stamp(what: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {what}")

    apply(release, push_secret(release))
    config = (EXAMPLES / "velora-tuning.yaml").read_text()
    apply(
        release,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIG_MAP, "namespace": namespace},
            "data": {"training_config.yaml": config},
        },
    )
    adapter_ref = f"{release.registries.adapters.host}/velora-adapter:1"
    # Inference and tuning are applied together, as a user would, and run side by side.
    apply(release, workspace("smollm2", namespace, {"inference": {"preset": {"name": PRESET}}}))
    apply(
        release,
        workspace(
            "velora-tuning",
            namespace,
            {
                "tuning": {
                    "preset": {"name": PRESET},
                    "method": "lora",
                    "config": CONFIG_MAP,
                    "input": {"urls": [dataset_url]},
                    "output": {"image": adapter_ref, "imagePushSecret": SECRET},
                }
            },
        ),
    )

    # a. the base model serves through the Workspace's Service.
    base = wait_for_condition(release, "smollm2", "WorkspaceSucceeded", READY_S)
    stamp("inference Workspace Ready")
    assert condition(base, "InferenceReady").get("status") == "True"
    claims = ours(release, NODECLAIMS)
    assert claims == [], "a node was claimed for a CPU preset on a ready CPU node"
    pods = release.api.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods",
        query={"labelSelector": "kaito.sh/workspace=smollm2"},
    )["items"]
    assert pods and all(p["spec"]["nodeName"] == real_node.name for p in pods)
    table = release.kubectl(f"--namespace={namespace}", "get", "workspace", "smollm2").stdout
    print(table)
    row = table.splitlines()[1].split()
    assert row[0] == "smollm2" and PRESET in row and "True" in row
    url = service_url(release, "smollm2")
    base_answer = ask(url, PRESET)
    stamp(f"base model answers through {url}: {base_answer!r}")
    assert base_answer.strip()
    assert EXPECTED_FACT not in base_answer
    legacy = httpx.post(
        f"{url}/chat",
        json={"prompt": DEMO_QUESTION, "generate_kwargs": {"max_length": 40, "do_sample": False}},
        timeout=120,
    )
    assert legacy.status_code == 200, legacy.text
    assert legacy.json()["Result"].strip()

    # b. tuning: progress in status, the adapter pushed with the secret's credentials.
    progress: list[int] = []

    def note_progress(ws: JSON) -> None:
        percent = ((ws.get("status") or {}).get("tuning") or {}).get("progressPercent")
        if isinstance(percent, int) and (not progress or progress[-1] != percent):
            progress.append(percent)

    tuned = wait_for_condition(
        release, "velora-tuning", "WorkspaceSucceeded", TUNING_S, seen=note_progress
    )
    stamp(f"tuning Workspace Succeeded, progress seen {progress}")
    assert progress, "no progress was reported while the job ran"
    status = tuned["status"]["tuning"]
    assert status.get("adapterImage") == adapter_ref
    registry = release.registries.adapters
    manifest = httpx.get(
        f"http://{registry.host}/v2/velora-adapter/manifests/1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        auth=(registry.username or "", registry.password or ""),
        timeout=30,
    )
    assert manifest.status_code == 200, manifest.text
    anonymous = httpx.get(f"http://{registry.host}/v2/velora-adapter/manifests/1", timeout=30)
    assert anonymous.status_code == 401  # the push really needed the secret

    # c. the adapter answers the fine-tuned question; the base model still does not.
    apply(
        release,
        workspace(
            "smollm2-velora",
            namespace,
            {
                "inference": {
                    "preset": {"name": PRESET},
                    "adapters": [
                        {
                            "source": {
                                "name": "velora",
                                "image": adapter_ref,
                                "imagePullSecrets": [SECRET],
                            },
                            "strength": "1.0",
                        }
                    ],
                }
            },
        ),
    )
    wait_for_condition(release, "smollm2-velora", "WorkspaceSucceeded", READY_S)
    tuned_url = service_url(release, "smollm2-velora")
    tuned_answer = ask(tuned_url, "velora")
    stamp(f"adapter answers: {tuned_answer!r}")
    assert EXPECTED_FACT in tuned_answer
    assert EXPECTED_FACT not in ask(url, PRESET)

    # d. deleting the Workspaces leaves nothing they created.
    for name in ("smollm2", "velora-tuning", "smollm2-velora"):
        release.kubectl(f"--namespace={namespace}", "delete", "workspace", name, "--wait=false")
    deadline = time.monotonic() + GONE_S
    left = leftovers(release)
    while left and time.monotonic() < deadline:
        time.sleep(2)
        left = leftovers(release)
    stamp(f"deleted, left behind: {left}")
    assert left == []
    with contextlib.suppress(Exception):
        release.api.delete(push_secret(release))
