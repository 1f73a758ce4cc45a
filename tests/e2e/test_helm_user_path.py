"""The user's path: helm install, apply the legacy YAML, watch the columns, delete, upgrade.

The chart is installed into the session control plane. Its image cannot run here, so the
operator runs as a local process (`python -m kaito.operator`) with the environment of the
chart's Deployment and the identity of the chart's ServiceAccount (a token from
`kubectl create token`): a permission the ClusterRole lacks fails these tests.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.devcluster import ApiClient, ControlPlane, kubectl_path
from kaito.devcluster.controlplane import free_port
from tests.support.kubelet import finish_preflight
from tests.unit.deploy.chart import CHART, REPO, require_helm, set_flags

pytestmark = [pytest.mark.slow]

JSON = dict[str, Any]
LEGACY_EXAMPLE = REPO / "examples" / "fine-tuning" / "kaito_workspace_tuning_phi_3.yaml"
RELEASE = "kaito"
WEBHOOK = "validation.workspace.kaito.sh"
VWC_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
# What a refused request looks like in kopf's and lightkube's logs (not a bare "403", which an
# access-log line can contain as a response size).
PERMISSION_ERRORS = ("forbidden", "Forbidden", "status=403", "'code': 403", "Not enough RBAC")


class Process:
    """A background Python module with a log file."""

    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        handle = log.open("ab")
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=handle, stderr=handle
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])


@dataclass
class Release:
    """The installed chart, its namespaces, and the operator running with its identity."""

    control_plane: ControlPlane
    api: ApiClient
    helm: Path
    namespace: str  # the release's
    workloads: str  # where the user's Workspaces go (the operator watches only it)
    workdir: Path
    values: JSON
    operator: Process | None = None
    restarts: int = 0
    logs: list[Process] = field(default_factory=list)

    def run_helm(self, *args: str) -> str:
        result = subprocess.run(
            [str(self.helm), *args, f"--namespace={self.namespace}"],
            capture_output=True,
            text=True,
            env=self.control_plane.env(),
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    def manifest(self) -> list[JSON]:
        text = self.run_helm("get", "manifest", RELEASE)
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def deployment(self) -> JSON:
        return self.api.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{RELEASE}")

    def operator_env(self) -> dict[str, str]:
        """The operator container's environment as installed (read back from the cluster)."""
        container = self.deployment()["spec"]["template"]["spec"]["containers"][0]
        return {item["name"]: str(item.get("value", "")) for item in container["env"]}

    def service_account_kubeconfig(self) -> Path:
        """A kubeconfig whose only credential is a token of the chart's ServiceAccount."""
        token = self.control_plane.kubectl(
            f"--namespace={self.namespace}", "create", "token", RELEASE, "--duration=2h"
        ).stdout.strip()
        admin = yaml.safe_load(self.control_plane.kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": "kaito-operator", "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "kaito-operator"}}],
            "current-context": "e2e",
        }
        path = self.workdir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def start_operator(self) -> Process:
        """Start (or restart, as a rollout would) the operator with the installed settings."""
        if self.operator is not None:
            self.operator.stop()
        env = {
            **{k: v for k, v in self.control_plane.env().items() if not k.startswith("KAITO_")},
            **self.operator_env(),
            "KUBECONFIG": str(self.service_account_kubeconfig()),
        }
        self.restarts += 1
        self.operator = Process(
            "kaito.operator", env, self.workdir / f"operator-{self.restarts}.log"
        )
        self.logs.append(self.operator)
        self.wait_healthy()
        return self.operator

    def wait_healthy(self) -> None:
        """The probe the chart's Deployment uses: kopf's /healthz answers 200."""
        url = f"http://127.0.0.1:{self.values['healthPort']}/healthz"

        def healthy() -> bool:
            assert self.operator is not None
            assert self.operator.process.poll() is None, self.operator.tail()
            # No proxies: the probe is local, like the kubelet's.
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with contextlib.suppress(OSError), opener.open(url, timeout=2) as response:
                return bool(response.status == 200)
            return False

        self.api.wait_for(healthy, timeout_s=60, interval_s=0.5, what="the operator's /healthz")

    def assert_running(self) -> None:
        assert self.operator is not None
        assert self.operator.process.poll() is None, f"operator exited:\n{self.operator.tail()}"

    def permission_errors(self) -> list[str]:
        return [
            line
            for log in self.logs
            for line in log.text().splitlines()
            if any(marker in line for marker in PERMISSION_ERRORS)
        ]


@pytest.fixture(scope="module")
def release(
    control_plane: ControlPlane,
    api: ApiClient,
    nodeclaim_crd: JSON,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    helm = require_helm()
    suffix = secrets.token_hex(3)
    workloads = f"e2e-workloads-{suffix}"
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": workloads}})
    values: JSON = {
        "watchNamespace": workloads,
        "reconcile.resyncSeconds": 20,
        "healthPort": free_port(),
        # The apiserver calls the local operator, not the chart's Service.
        "webhook.hostOverride": "127.0.0.1",
        "webhook.listenAddress": "127.0.0.1",
        "webhook.port": free_port(),
    }
    installed = Release(
        control_plane,
        api,
        helm,
        f"kaito-system-{suffix}",
        workloads,
        tmp_path_factory.mktemp("e2e"),
        values,
    )
    started = time.monotonic()
    installed.run_helm("install", RELEASE, str(CHART), "--create-namespace", *set_flags(values))
    simulator = Process(
        "kaito.provisioners.kwok", control_plane.env(), installed.workdir / "simulator.log"
    )
    try:
        installed.start_operator()
        print(f"helm install to a healthy operator: {time.monotonic() - started:.1f} s")
        yield installed
    finally:
        if installed.operator is not None:
            installed.operator.stop()
        simulator.stop()
        # failurePolicy Fail with no server would block every later Workspace write.
        with contextlib.suppress(Exception):
            api.delete(
                {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingWebhookConfiguration",
                    "metadata": {"name": WEBHOOK},
                }
            )
        installed.run_helm("uninstall", RELEASE, "--wait")
        for name in (workloads, installed.namespace):
            api.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def kubectl(
    release: Release, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The user's kubectl (admin credentials) in the workloads namespace."""
    result = subprocess.run(
        [str(kubectl_path()), f"--namespace={release.workloads}", *args],
        input=input,
        capture_output=True,
        text=True,
        env=release.control_plane.env(),
        # Above the `--timeout=90s` the delete calls pass, so kubectl's own deadline (with its
        # message) decides, not a kill of the process on a loaded machine.
        timeout=150,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stderr}"
    return result


def columns(release: Release, name: str) -> dict[str, str]:
    """`kubectl get workspace NAME` as column -> cell, cut at the header's offsets (cells may
    be empty)."""
    header, row = kubectl(release, "get", "workspace", name).stdout.splitlines()[:2]
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, bounds, strict=True)}


def owned(release: Release, path: str, name: str) -> list[str]:
    selector = f"kaito.sh/workspace={name}"
    if "/namespaces/" not in path:
        # Cluster-scoped (NodeClaims): Workspace names repeat across namespaces, and other tests
        # in this session apply the same legacy YAML, so the namespace label must match too.
        selector += f",kaito.sh/workspacenamespace={release.workloads}"
    found = release.api.request("GET", path, query={"labelSelector": selector})["items"]
    return [item["metadata"]["name"] for item in found]


def nothing(probe: Callable[[], list[str]]) -> Callable[[], bool]:
    return lambda: not probe()


def inference_workspace(release: Release, name: str, preset: str = "phi-3-mini-4k-instruct") -> str:
    """A small inference Workspace in the workloads namespace, as YAML for `kubectl apply`."""
    return yaml.safe_dump(
        {
            "apiVersion": "kaito.sh/v1beta1",
            "kind": "Workspace",
            "metadata": {"name": name, "namespace": release.workloads},
            "resource": {
                "instanceType": "Standard_NC24ads_A100_v4",
                "labelSelector": {"matchLabels": {"app": name}},
            },
            "inference": {"preset": {"name": preset}},
        }
    )


def test_helm_install_brings_up_the_operator_with_the_charts_identity(release: Release) -> None:
    objects = {(o["kind"], o["metadata"]["name"]) for o in release.manifest()}
    assert {
        ("ServiceAccount", RELEASE),
        ("ClusterRole", RELEASE),
        ("ClusterRoleBinding", RELEASE),
        ("Deployment", RELEASE),
        ("ConfigMap", "lora-params-template"),
        ("ConfigMap", "qlora-params-template"),
    } <= objects
    who = release.control_plane.kubectl(
        f"--kubeconfig={release.service_account_kubeconfig()}", "auth", "whoami", "-o", "json"
    )
    username = json.loads(who.stdout)["status"]["userInfo"]["username"]
    assert username == f"system:serviceaccount:{release.namespace}:{RELEASE}"
    # The identity is least-privilege: it cannot read Secrets.
    denied = release.control_plane.kubectl(
        f"--kubeconfig={release.service_account_kubeconfig()}",
        "auth",
        "can-i",
        "get",
        "secrets",
        "-A",
        check=False,
    )
    assert denied.stdout.strip() == "no"
    config = release.api.wait_for(
        lambda: release.api.get(f"{VWC_PATH}/{WEBHOOK}"),
        timeout_s=60,
        what="the webhook the operator registers",
    )
    assert config["webhooks"][0]["clientConfig"]["url"].startswith("https://127.0.0.1:")
    time.sleep(2)  # a start-up task that lacks a permission ends the process
    release.assert_running()
    assert release.permission_errors() == []


def test_the_legacy_tuning_yaml_runs_to_success_and_deleting_it_leaves_nothing_behind(
    release: Release,
) -> None:
    name = "workspace-tuning-phi-3"
    started = time.monotonic()
    applied = kubectl(release, "apply", "-f", str(LEGACY_EXAMPLE))
    assert "created" in applied.stdout
    # kwok runs no preflight container: report a good dataset as the kubelet would.
    finish_preflight(release.api, release.workloads, name)

    want = {
        "INSTANCE": "Standard_NC6s_v3",
        "RESOURCEREADY": "True",
        "JOBSTARTED": "True",
        "WORKSPACESUCCEEDED": "True",
    }

    def reached() -> dict[str, str] | None:
        release.assert_running()
        row = columns(release, name)
        return row if all(row.get(k) == v for k, v in want.items()) else None

    try:
        row = release.api.wait_for(reached, timeout_s=180, interval_s=1.0, what="the columns")
    except TimeoutError:
        assert release.operator is not None
        path = f"/apis/kaito.sh/v1beta1/namespaces/{release.workloads}/workspaces/{name}"
        status = release.api.get(path).get("status")
        raise AssertionError(f"{status}\n{release.operator.tail()}") from None
    print(f"kubectl apply to WORKSPACESUCCEEDED: {time.monotonic() - started:.1f} s")
    assert row["NAME"] == name
    assert row["INFERENCEREADY"] == ""  # a tuning Workspace serves nothing (as upstream)
    assert row["STATE"] == "Succeeded"
    claims = owned(release, "/apis/karpenter.sh/v1/nodeclaims", name)
    assert len(claims) == 1

    kubectl(release, "delete", "-f", str(LEGACY_EXAMPLE), "--timeout=90s")
    ns = release.workloads
    leftovers: dict[str, Callable[[], list[str]]] = {
        "nodeclaims": lambda: owned(release, "/apis/karpenter.sh/v1/nodeclaims", name),
        "nodes": lambda: [n for n in claims if release.api.exists(f"/api/v1/nodes/{n}")],
        "jobs": lambda: owned(release, f"/apis/batch/v1/namespaces/{ns}/jobs", name),
        "pods": lambda: owned(release, f"/api/v1/namespaces/{ns}/pods", name),
        "services": lambda: owned(release, f"/api/v1/namespaces/{ns}/services", name),
        "configmaps": lambda: owned(release, f"/api/v1/namespaces/{ns}/configmaps", name),
        # The tuning results volume is owned by the Workspace, whatever its labels.
        "persistentvolumeclaims": lambda: [
            c["metadata"]["name"]
            for c in release.api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")["items"]
        ],
        "persistentvolumes": lambda: [
            v["metadata"]["name"]
            for v in release.api.get("/api/v1/persistentvolumes")["items"]
            if (v["spec"].get("claimRef") or {}).get("namespace") == ns
        ],
    }
    for what, probe in leftovers.items():
        release.api.wait_for(nothing(probe), timeout_s=60, what=f"no {what} left")
    assert not release.api.exists(f"/apis/kaito.sh/v1beta1/namespaces/{ns}/workspaces/{name}")
    # Only the copied tuning template stays: it is shared by the namespace's Workspaces and has
    # no owner, as upstream.
    config_maps = release.api.get(f"/api/v1/namespaces/{ns}/configmaps")["items"]
    assert sorted(c["metadata"]["name"] for c in config_maps) in (
        ["kube-root-ca.crt"],
        ["kube-root-ca.crt", "qlora-params-template"],
    )
    assert release.permission_errors() == []


def test_the_webhook_installed_by_the_chart_rejects_an_invalid_workspace(
    release: Release,
) -> None:
    typo = inference_workspace(release, "typo", preset="phi-3-mini-4k-instruc")
    result = kubectl(release, "apply", "-f", "-", input=typo, check=False)
    assert result.returncode != 0
    assert f'admission webhook "workspace.{WEBHOOK}" denied the request' in result.stderr
    assert "phi-3-mini-4k-instruct" in result.stderr  # the suggestion for the typo
    assert not release.api.exists(
        f"/apis/kaito.sh/v1beta1/namespaces/{release.workloads}/workspaces/typo"
    )


def test_helm_upgrade_rolls_the_operator_without_touching_running_workloads(
    release: Release,
) -> None:
    name = "phi-3"
    kubectl(release, "apply", "-f", "-", input=inference_workspace(release, name))
    release.api.wait_for(
        lambda: columns(release, name)["WORKSPACESUCCEEDED"] == "True",
        timeout_s=180,
        interval_s=1.0,
        what="the inference workspace to be ready",
    )
    ns = release.workloads
    sts_path = f"/apis/apps/v1/namespaces/{ns}/statefulsets/{name}"

    def workloads() -> JSON:
        sts = release.api.get(sts_path)
        pods = release.api.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        return {
            "statefulset": (sts["metadata"]["uid"], sts["metadata"]["generation"]),
            "pods": sorted(p["metadata"]["uid"] for p in pods),
            "claims": sorted(owned(release, "/apis/karpenter.sh/v1/nodeclaims", name)),
        }

    before = workloads()
    template_before = release.deployment()["spec"]["template"]
    generation = release.deployment()["metadata"]["generation"]

    release.run_helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "--reuse-values",
        *set_flags({"reconcile.resyncSeconds": 5, "logLevel": "DEBUG"}),
    )
    deployment = release.deployment()
    assert deployment["metadata"]["generation"] == generation + 1
    assert deployment["spec"]["template"] != template_before  # the Deployment rolls
    assert release.operator_env()["KAITO_RESYNC_SECONDS"] == "5"

    release.start_operator()  # what the rollout does to the pod
    # Several resyncs of the new operator pass over the workspace.
    time.sleep(12)
    assert workloads() == before
    assert columns(release, name)["WORKSPACESUCCEEDED"] == "True"
    for template in ("lora-params-template", "qlora-params-template"):
        assert release.api.exists(f"/api/v1/namespaces/{release.namespace}/configmaps/{template}")
    assert release.permission_errors() == []
    kubectl(release, "delete", "workspace", name, "--timeout=90s")


def lease_holder(release: Release) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{release.namespace}/leases/{RELEASE}-leader"
    if not release.api.exists(path):
        return ""
    return str(release.api.get(path)["spec"].get("holderIdentity") or "")


def test_two_operators_one_leads_and_the_standby_takes_over_when_it_dies(
    release: Release,
) -> None:
    """Two replicas as the chart runs them, with one shared webhook certificate (cert-manager's
    role in a cluster) and one port (SO_REUSEPORT, as a Service spreads requests over pods)."""
    from kaito.operator.certs import self_signed

    lease_s, retry_s = 6, 1
    certs = release.workdir / "shared-certs"
    self_signed(certs, ["127.0.0.1"])
    assert release.operator is not None
    release.operator.stop()  # a clean stop releases the Lease
    assert lease_holder(release) == ""
    base = {
        **{k: v for k, v in release.control_plane.env().items() if not k.startswith("KAITO_")},
        **release.operator_env(),
        "KUBECONFIG": str(release.service_account_kubeconfig()),
        "KAITO_WEBHOOK_CERT_DIR": str(certs),
        # Shorter than the chart's 15/10/2 s so the takeover fits in a short test.
        "KAITO_LEADER_ELECTION_LEASE_DURATION": str(lease_s),
        "KAITO_LEADER_ELECTION_RENEW_DEADLINE": "4",
        "KAITO_LEADER_ELECTION_RETRY_PERIOD": str(retry_s),
    }
    assert base["KAITO_LEADER_ELECTION"] == "true"

    def start(identity: str, health_port: int) -> Process:
        env = {
            **base,
            "KAITO_LEADER_ELECTION_IDENTITY": identity,
            "KAITO_LIVENESS_ENDPOINT": f"http://127.0.0.1:{health_port}/healthz",
        }
        process = Process("kaito.operator", env, release.workdir / f"{identity}.log")
        release.logs.append(process)
        return process

    def healthy(process: Process, port: int) -> Callable[[], bool]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def probe() -> bool:
            assert process.process.poll() is None, process.tail()
            with contextlib.suppress(OSError), opener.open(f"http://127.0.0.1:{port}/healthz") as r:
                return bool(r.status == 200)
            return False

        return probe

    def ready(name: str) -> None:
        release.api.wait_for(
            lambda: columns(release, name)["WORKSPACESUCCEEDED"] == "True",
            timeout_s=120,
            interval_s=1.0,
            what=f"{name} to be reconciled to ready",
        )

    def invalid_is_refused() -> None:
        bad = inference_workspace(release, "typo", preset="phi-3-mini-4k-instruc")
        result = kubectl(release, "apply", "-f", "-", input=bad, check=False)
        assert f'admission webhook "workspace.{WEBHOOK}" denied' in result.stderr, result.stderr

    port_a, port_b = release.values["healthPort"], free_port()
    a = start("operator-a", port_a)
    release.operator = a  # the fixture's teardown stops whichever is current
    release.api.wait_for(
        lambda: lease_holder(release) == "operator-a", timeout_s=60, what="a leads"
    )
    b = start("operator-b", port_b)
    release.api.wait_for(healthy(b, port_b), timeout_s=60, interval_s=0.5, what="b's /healthz")
    release.api.wait_for(lambda: "standby" in b.text(), timeout_s=30, what="b to wait as standby")

    kubectl(release, "apply", "-f", "-", input=inference_workspace(release, "ws-led-by-a"))
    ready("ws-led-by-a")
    assert lease_holder(release) == "operator-a"
    assert "acquired by operator-b" not in b.text()  # b never started reconciling
    for _ in range(4):  # connections are spread over both servers
        invalid_is_refused()

    a.process.kill()  # no clean shutdown: the Lease must expire
    killed = time.monotonic()
    a.process.wait(timeout=10)
    release.operator = b
    release.api.wait_for(
        lambda: lease_holder(release) == "operator-b",
        timeout_s=lease_s + 20,
        interval_s=0.2,
        what="b to take over",
    )
    took = time.monotonic() - killed
    print(f"standby took over {took:.1f} s after the leader was killed")
    # At most one lease duration after the last renewal it saw, plus its polling.
    assert took <= lease_s + 3 * retry_s + 2
    invalid_is_refused()  # only b serves the webhook now
    kubectl(release, "apply", "-f", "-", input=inference_workspace(release, "ws-led-by-b"))
    ready("ws-led-by-b")
    for name in ("ws-led-by-a", "ws-led-by-b"):
        kubectl(release, "delete", "workspace", name, "--timeout=90s")
    assert b.process.poll() is None, b.tail()
    assert release.permission_errors() == []
