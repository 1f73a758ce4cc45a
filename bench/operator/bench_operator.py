"""Operator benchmark: apply-to-succeeded latency and throughput for many Workspaces at once.

Starts the dev control plane (etcd, apiserver, controller-manager, scheduler, kwok), the kwok
node simulator and the operator as a subprocess, then measures:

1. latency: create one inference Workspace, time until WorkspaceSucceeded=True, minus the
   simulated node start (NodeClaim creation to NodeClaim Ready);
2. throughput: create N Workspaces at once, time until all are WorkspaceSucceeded, with the
   operator's CPU time (utime + stime from /proc) and peak RSS (VmHWM), and the CPU seconds of
   every other process of the bench over the same phase (etcd, apiserver, scheduler,
   controller-manager, the kwok simulator, this client) with the load average, so that a slow
   run says where the machine's time went.

Usage: python bench/operator/bench_operator.py [--count 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from kaito.devcluster import (
    ApiClient,
    ControlPlane,
    find_binaries,
    install_crd,
    install_nodeclaim_crd,
)

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "charts" / "kaito" / "crds" / "kaito.sh_workspaces.yaml"
CLK_TCK = 100


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cpu, peak


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (utime + stime) of each named live process."""
    return {name: proc_usage(pid)[0] for name, pid in pids.items()}


def workspace(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"app": name}},
        },
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
    }


def succeeded(api: ApiClient, namespace: str) -> set[str]:
    items = api.get(f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces")["items"]
    done = set()
    for item in items:
        for cond in (item.get("status") or {}).get("conditions") or []:
            if cond["type"] == "WorkspaceSucceeded" and cond["status"] == "True":
                done.add(item["metadata"]["name"])
    return done


def trace(api: ApiClient, namespace: str, name: str, start: float) -> dict[str, float]:
    """Seconds from create to each milestone of one workspace, polled every 50 ms."""
    seen: dict[str, float] = {}
    selector = f"kaito.sh/workspace={name}"
    ns = f"/api/v1/namespaces/{namespace}"

    def mark(key: str, done: bool) -> None:
        if done and key not in seen:
            seen[key] = round(time.monotonic() - start, 2)

    while "succeeded" not in seen:
        claims = api.request(
            "GET", "/apis/karpenter.sh/v1/nodeclaims", query={"labelSelector": selector}
        )["items"]
        mark("nodeclaim_created", bool(claims))
        mark(
            "nodeclaim_ready",
            bool(claims)
            and all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (x.get("status") or {}).get("conditions") or []
                )
                for x in claims
            ),
        )
        pods = api.request("GET", f"{ns}/pods", query={"labelSelector": selector})["items"]
        mark("pod_created", bool(pods))
        mark("pod_scheduled", any(p["spec"].get("nodeName") for p in pods))
        mark(
            "pod_ready",
            any(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (p.get("status") or {}).get("conditions") or []
                )
                for p in pods
            ),
        )
        mark("succeeded", name in succeeded(api, namespace))
        time.sleep(0.05)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kaito-bench-"))
    plane = ControlPlane(work, find_binaries())
    with plane:
        api = plane.client()
        install_nodeclaim_crd(api)
        install_crd(api, yaml.safe_load(CRD.read_text()))
        # The claim cap (default 64) would hold most of the N back for good: room for all.
        env = {
            **plane.env(),
            "KAITO_RESYNC_SECONDS": "60",
            "KAITO_MAX_NODECLAIMS_TOTAL": str(args.count + 2),
        }
        logs = (work / "operator.log").open("ab")
        simulator = subprocess.Popen(
            [sys.executable, "-m", "kaito.provisioners.kwok"], env=env, stdout=logs, stderr=logs
        )
        operator = subprocess.Popen(
            [sys.executable, "-m", "kaito.operator"], env=env, stdout=logs, stderr=logs
        )
        try:
            # Warm up: the operator is ready once a first workspace has a status.
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "warmup"}})
            api.create(workspace("warmup", "warm"))
            path = "/apis/kaito.sh/v1beta1/namespaces/warmup/workspaces/warm"
            api.wait_for(lambda: api.get(path).get("status"), timeout_s=180, what="the operator")
            result: dict[str, Any] = {"count": args.count}
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "latency"}})
            start = time.monotonic()
            api.create(workspace("latency", "one"))
            timeline = trace(api, "latency", "one", start)
            total = time.monotonic() - start
            result["timeline_s"] = timeline
            nodes = timeline["nodeclaim_ready"] - timeline["nodeclaim_created"]
            result["latency_s"] = round(total, 2)
            result["simulated_node_start_s"] = round(nodes, 2)
            result["latency_minus_nodes_s"] = round(total - nodes, 2)

            pids = {p.name: p.pid for p in plane.processes}
            pids.update(simulator=simulator.pid, operator=operator.pid, bench=os.getpid())
            before = cpu_seconds(pids)
            loads: list[float] = []
            cpu0 = before["operator"]
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "many"}})
            start = time.monotonic()
            for index in range(args.count):
                api.create(workspace("many", f"ws-{index:03d}"))
            created = time.monotonic() - start
            while len(succeeded(api, "many")) < args.count:
                if time.monotonic() - start > args.timeout:
                    break
                loads.append(os.getloadavg()[0])
                time.sleep(1.0)
            elapsed = time.monotonic() - start
            cpu1, peak = proc_usage(operator.pid)
            after = cpu_seconds(pids)
            done = len(succeeded(api, "many"))
            result.update(
                create_all_s=round(created, 2),
                all_succeeded_s=round(elapsed, 2),
                succeeded=done,
                workspaces_per_s=round(done / elapsed, 2),
                operator_cpu_s=round(cpu1 - cpu0, 2),
                operator_cpu_s_per_workspace=round((cpu1 - cpu0) / max(done, 1), 3),
                operator_peak_rss_mib=round(peak / 2**20, 1),
                cpu_s_by_process={k: round(after[k] - before[k], 2) for k in pids},
                cpu_s_all=round(sum(after[k] - before[k] for k in pids), 2),
                load_1m_mean=round(sum(loads) / max(len(loads), 1), 2),
                load_1m_max=round(max(loads, default=0.0), 2),
            )
        finally:
            operator.terminate()
            simulator.terminate()
            operator.wait(timeout=30)
            simulator.wait(timeout=30)
        # The operator logs its pass and write counters (whole run) when it stops.
        for line in (work / "operator.log").read_text(errors="replace").splitlines():
            if "kaito.operator: stats: " in line:
                result["operator_stats"] = json.loads(line.split("stats: ", 1)[1])
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
