"""Autoscaling on real pods: metrics-server on the real node, and an InferenceSet of the CPU
preset that kube-controller-manager's HPA scales 1 -> 2 -> 1 on its pods' CPU under load.

metrics-server (tools/setup.d/55-metrics-server.sh) runs as a pod from a one-file image, is
reached through the aggregation layer (APIService v1beta1.metrics.k8s.io) and scrapes the real
kubelet with its ServiceAccount token, checking the kubelet's certificate (no insecure TLS).
The load generator is bounded (a fixed request count and a time limit) and talks only to the
set's ClusterIP Service; each pod's own /metrics (pod IP, node bridge) shows who answered.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import yaml

from kaito.devcluster import ApiClient, ApiError, ControlPlane
from kaito.devcluster import metrics as metrics_server
from kaito.devcluster.realnode import NODE_LABEL, TOLERATION, RealNode, image_parts
from kaito.manifests.keys import HTTP_PORT
from tests.e2e.conftest import PRESET, PodRelease
from tests.e2e.test_user_path import describe_pods, service_url
from tests.support.registry import LocalRegistry, push_image

pytestmark = [pytest.mark.slow]

JSON = dict[str, Any]
SET = "chat"
# Cold, the runtime image is pulled onto the node first; warm, a replica is Ready in < 1 min.
READY_S = 900
METRICS_S = 180
# The load: at most this many requests, for at most this long, from this many clients.
MAX_REQUESTS = 3000
LOAD_S = 480
# Two clients keep one busy llama.cpp server at 4-7 times its 250m request, far above the
# target, and leave the 2-core machine some CPU to start the second replica with.
CLIENTS = 2
# After load: the HPA's scale-down window (set below), metrics-server's 10 s resolution and the
# dev cluster's 5 s HPA sync, then the Workspace deletion.
SCALE_DOWN_WINDOW_S = 15
SCALE_DOWN_S = 240
GONE_S = 180
# Percent of the pods' CPU request (250m for CPU presets): one busy llama.cpp server is far
# above it, an idle one far below.
CPU_TARGET = 50


def _require_binary() -> str:
    binary = metrics_server.binary()
    if not binary.is_file():
        message = f"metrics-server not built at {binary}: run tools/setup.d/55-metrics-server.sh"
        if os.environ.get("KAITO_REQUIRE_CLUSTER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return str(binary)


@pytest.fixture(scope="module")
def metrics_api(
    api: ApiClient, real_node: RealNode, image_registry: LocalRegistry
) -> Iterator[ApiClient]:
    """metrics-server installed on the real node, its APIService Available; removed after."""
    binary = _require_binary()
    config, layer = image_parts({"/metrics-server": metrics_server.binary()}, ["/metrics-server"])
    real_node.trust_registry(image_registry.host)
    image = push_image(
        image_registry, "kaito/metrics-server", metrics_server.version(), config, [layer]
    )
    started = time.monotonic()
    try:
        metrics_server.install(
            api,
            image,
            node_selector={NODE_LABEL: "true"},
            tolerations=[TOLERATION],
            timeout_s=METRICS_S,
        )
    except TimeoutError:
        pods = api.request(
            "GET",
            f"/api/v1/namespaces/{metrics_server.NAMESPACE}/pods",
            query={"labelSelector": f"k8s-app={metrics_server.NAME}"},
        )["items"]
        raise AssertionError(
            f"{binary}: {[p.get('status') for p in pods]}\n{real_node.logs_tail()}"
        ) from None
    print(f"metrics-server APIService Available in {time.monotonic() - started:.1f} s")
    try:
        yield api
    finally:
        metrics_server.uninstall(api)


def _top(control_plane: ControlPlane, *args: str) -> str:
    result = control_plane.kubectl("top", *args, check=False)
    return result.stdout if result.returncode == 0 else ""


def test_kubectl_top_shows_pods_and_the_node_of_the_real_kubelet(
    metrics_api: ApiClient, control_plane: ControlPlane, real_node: RealNode
) -> None:
    # The first CPU figure needs two scrapes (a rate), one resolution apart.
    started = time.monotonic()
    listing = metrics_api.wait_for(
        lambda: _top(control_plane, "pod", f"--namespace={metrics_server.NAMESPACE}"),
        timeout_s=METRICS_S,
        interval_s=2,
        what="kubectl top pod to list metrics-server itself",
    )
    print(f"kubectl top pod after {time.monotonic() - started:.1f} s:\n{listing}")
    assert re.search(rf"^{metrics_server.NAME}-\S+\s+\d+m\s+\d+Mi", listing, re.M), listing
    nodes = metrics_api.wait_for(
        lambda: _top(control_plane, "node", real_node.name),
        timeout_s=METRICS_S,
        interval_s=2,
        what="kubectl top node for the real node",
    )
    print(nodes)
    assert real_node.name in nodes
    usage = metrics_server.pod_usage(
        metrics_api, metrics_server.NAMESPACE, f"k8s-app={metrics_server.NAME}"
    )
    assert len(usage) == 1 and all(m >= 0 for m in usage.values()), usage
    # The kwok nodes have no kubelet and are not scraped (--node-selector), so they have none.
    nodes_api = metrics_api.get("/apis/metrics.k8s.io/v1beta1/nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes_api] == [real_node.name]


# --- the InferenceSet under load --------------------------------------------------------------


def inference_set(namespace: str) -> JSON:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "InferenceSet",
        "metadata": {"name": SET, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "labelSelector": {"matchLabels": {NODE_LABEL: "true"}},
            "template": {"inference": {"preset": {"name": PRESET}}},
        },
    }


def autoscaler(iset: JSON) -> str:
    """The HPA as a user gets it: `kaito autoscale --with hpa --metric cpu`."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "kaito", "autoscale", "-f", "-", "--with", "hpa"),
            *("--metric", "cpu", "--target", str(CPU_TARGET), "--min", "1", "--max", "2"),
            *("--scale-down-window", str(SCALE_DOWN_WINDOW_S)),
        ],
        input=yaml.safe_dump(iset),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class Timeline:
    """Replica counts sampled every few seconds while the test runs, printed at the end."""

    api: ApiClient
    namespace: str
    started: float = field(default_factory=time.monotonic)
    rows: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> tuple[int, int, int, str]:
        base = f"/apis/kaito.sh/v1beta1/namespaces/{self.namespace}"
        iset = self.api.get(f"{base}/inferencesets/{SET}")
        status = iset.get("status") or {}
        hpa_path = (
            f"/apis/autoscaling/v2/namespaces/{self.namespace}/horizontalpodautoscalers/{SET}"
        )
        cpu = "-"
        try:
            current = (self.api.get(hpa_path).get("status") or {}).get("currentMetrics") or []
            # Until metrics arrive the HPA lists an entry of type "" with no resource.
            found = [m["resource"]["current"] for m in current if m.get("type") == "Resource"]
            if found and found[0].get("averageUtilization") is not None:
                cpu = f"{found[0]['averageUtilization']}%"
        except ApiError:  # the HPA may not exist yet
            pass
        return (
            int(iset["spec"].get("replicas") or 0),
            int(status.get("replicas") or 0),
            int(status.get("readyReplicas") or 0),
            cpu,
        )

    def record(self, note: str = "") -> tuple[int, int, int, str]:
        wanted, existing, ready, cpu = self.sample()
        row = (
            f"[{time.monotonic() - self.started:6.1f} s] spec.replicas={wanted} "
            f"replicas={existing} ready={ready} hpa cpu={cpu} {note}".rstrip()
        )
        if not self.rows or self.rows[-1].split("] ", 1)[1] != row.split("] ", 1)[1]:
            self.rows.append(row)
            print(row, flush=True)
        return wanted, existing, ready, cpu

    def run(self) -> None:
        while not self.stop.wait(5):
            try:
                self.record()
            except Exception as error:  # a transient apiserver error must not end sampling
                print(f"sample failed: {error}", flush=True)


@dataclass
class Load:
    """CLIENTS threads posting short chat completions to one URL, bounded by count and time."""

    url: str
    sent: int = 0
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _claim(self) -> int | None:
        with self.lock:
            if self.sent >= MAX_REQUESTS:
                return None
            self.sent += 1
            return self.sent

    def worker(self, deadline: float) -> None:
        # A fresh connection per request: kube-proxy picks a backend per connection, so kept-
        # alive connections opened before the second replica existed would never reach it.
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(
            trust_env=False, timeout=120, limits=no_keepalive, headers={"Connection": "close"}
        ) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                number = self._claim()
                if number is None:
                    return
                body = {
                    "model": PRESET,
                    "messages": [{"role": "user", "content": f"Count to ten, take {number}."}],
                    "max_tokens": 48,
                    "temperature": 0,
                }
                try:
                    response = client.post(f"{self.url}/v1/chat/completions", json=body)
                    response.raise_for_status()
                    with self.lock:
                        self.ok += 1
                except httpx.HTTPError as error:
                    with self.lock:
                        self.errors.append(repr(error))
                    time.sleep(0.5)

    def start(self) -> list[threading.Thread]:
        deadline = time.monotonic() + LOAD_S
        threads = [
            threading.Thread(target=self.worker, args=(deadline,), daemon=True)
            for _ in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        return threads


def set_pods(release: PodRelease) -> list[JSON]:
    pods: list[JSON] = release.api.request(
        "GET",
        f"/api/v1/namespaces/{release.workloads}/pods",
        query={"labelSelector": f"kaito.sh/inferenceset={SET}"},
    )["items"]
    return pods


def members(release: PodRelease) -> list[str]:
    """The set's Workspaces (labelled with the set's name)."""
    found = release.api.request(
        "GET",
        f"/apis/kaito.sh/v1beta1/namespaces/{release.workloads}/workspaces",
        query={"labelSelector": f"kaito.sh/inferenceset={SET}"},
    )["items"]
    return [w["metadata"]["name"] for w in found]


def ready(pod: JSON) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def served(pod: JSON) -> int:
    """Chat completions this pod answered, from its own /metrics on the pod IP."""
    url = f"http://{pod['status']['podIP']}:{HTTP_PORT}/metrics"
    with httpx.Client(trust_env=False, timeout=10) as client:
        text = client.get(url).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("kaito_requests_total{") and all(
            label in line for label in ('path="/v1/chat/completions"', 'status="200"')
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_an_inferenceset_scales_out_under_load_and_back_when_it_stops(
    operator_release: PodRelease,
    real_node: RealNode,
    metrics_api: ApiClient,
    weights_image: str,
) -> None:
    release, namespace = operator_release, operator_release.workloads
    iset = inference_set(namespace)
    timeline = Timeline(release.api, namespace)
    release.kubectl("apply", "-f", "-", input=yaml.safe_dump(iset))
    sampler = threading.Thread(target=timeline.run, daemon=True)
    sampler.start()
    load = Load("")
    try:
        try:
            release.api.wait_for(
                lambda: timeline.sample()[2] == 1,
                timeout_s=READY_S,
                interval_s=3,
                what="the set's first replica to be ready",
            )
        except TimeoutError:
            raise AssertionError(describe_pods(release)) from None
        timeline.record("first replica ready")
        (first,) = set_pods(release)
        assert first["spec"]["nodeName"] == real_node.name
        release.kubectl("apply", "-f", "-", input=autoscaler(iset))
        # The HPA acts only on what metrics-server reports for the set's pods.
        release.api.wait_for(
            lambda: timeline.sample()[3] != "-",
            timeout_s=METRICS_S,
            interval_s=3,
            what="the HPA to read the set's CPU from metrics-server",
        )
        timeline.record("HPA reads CPU")
        assert timeline.sample()[0] == 1, "scaled before any load"

        load.url = service_url(release, SET)
        threads = load.start()
        load_started = time.monotonic()

        def both_answer() -> bool:
            pods = [p for p in set_pods(release) if ready(p)]
            return len(pods) == 2 and all(served(p) > 0 for p in pods)

        try:
            release.api.wait_for(
                both_answer,
                timeout_s=LOAD_S,
                interval_s=5,
                what="two ready replicas both answering through the Service",
            )
        except TimeoutError:
            raise AssertionError(
                f"sent {load.sent}, ok {load.ok}, errors {load.errors[-3:]}\n"
                f"{describe_pods(release)}"
            ) from None
        timeline.record(f"2 replicas answer, {time.monotonic() - load_started:.0f} s into load")
        load.stop.set()
        for thread in threads:
            thread.join(timeout=90)
        pods = set_pods(release)
        answered = {p["metadata"]["name"]: served(p) for p in pods if ready(p)}
        timeline.record(f"load stopped: {load.ok}/{load.sent} ok, per pod {answered}")
        assert load.sent <= MAX_REQUESTS
        assert {p["spec"]["nodeName"] for p in pods} == {real_node.name}
        # On the shared 2-core machine a request may outwait the client's limit while the
        # second replica loads; anything but a timeout (refused, reset, 5xx) is a failure.
        assert load.ok > 0
        assert all(e.startswith(("ReadTimeout", "WriteTimeout")) for e in load.errors), load.errors

        quiet = time.monotonic()
        try:
            release.api.wait_for(
                lambda: (
                    timeline.sample()[:3] == (1, 1, 1)
                    and len(members(release)) == 1
                    and len(set_pods(release)) == 1
                ),
                timeout_s=SCALE_DOWN_S,
                interval_s=5,
                what="the set to scale back to one replica",
            )
        except TimeoutError:
            hpa = release.kubectl(f"--namespace={namespace}", "describe", "hpa", SET).stdout
            raise AssertionError(f"{hpa}\n{describe_pods(release)}") from None
        timeline.record(f"back to 1, {time.monotonic() - quiet:.0f} s after the load stopped")
    finally:
        load.stop.set()
        timeline.stop.set()
        sampler.join(timeout=10)
        print("replicas over time:\n" + "\n".join(timeline.rows))
        release.kubectl(f"--namespace={namespace}", "delete", "hpa", SET, check=False)
        release.kubectl(
            f"--namespace={namespace}", "delete", "inferenceset", SET, "--wait=false", check=False
        )
        # The user-path test shares the namespace and wants it empty: wait for the cascade.
        deadline = time.monotonic() + GONE_S
        while (set_pods(release) or members(release)) and time.monotonic() < deadline:
            time.sleep(2)
    hpa_events = json.loads(
        release.kubectl(
            f"--namespace={namespace}",
            "get",
            "events",
            "--field-selector=involvedObject.kind=HorizontalPodAutoscaler",
            "-o",
            "json",
        ).stdout
    )["items"]
    rescales = [e["message"] for e in hpa_events if e.get("reason") == "SuccessfulRescale"]
    print("\n".join(rescales))
    assert any("New size: 2" in m for m in rescales), rescales
    assert any("New size: 1" in m for m in rescales), rescales
