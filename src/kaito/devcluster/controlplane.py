"""Start and stop etcd, apiserver, controller-manager, scheduler and kwok on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from kaito.devcluster.binaries import Binaries, find_binaries, kubectl_path
from kaito.devcluster.client import ApiClient
from kaito.devcluster.pki import FRONT_PROXY_CLIENT_USER, CertPair, ClusterPKI, generate_pki
from kaito.devcluster.process import Process, group_alive, stop_groups

CONTEXT_NAME = "kaito-dev"
LOOPBACK = "127.0.0.1"
STATE_FILE = "state.json"
SERVICE_CIDR = "10.0.0.0/24"
# kube-controller-manager's HPA sync period (upstream default 15 s).
HPA_SYNC_PERIOD_S = 5
# Nodes carrying this annotation are the ones kwok pretends to be the kubelet for.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


class ControlPlaneError(RuntimeError):
    """A component exited or did not become ready; the message carries its log tail."""


# bind(0) hands out ports from the kernel's ephemeral range, the range outgoing connections take
# their local ports from too. Between picking a port and a component binding it (seconds, while
# the apiserver starts) a connection such as the apiserver's to etcd can take it: a CI run lost
# kwok to "address already in use" that way. Ports below the range are never taken like that.
LISTEN_PORTS_SPAN = 12000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def listen_port_range(range_file: Path = EPHEMERAL_RANGE_FILE) -> range:
    """Ports to listen on: the span just below the ephemeral range (32768 where unknown)."""
    try:
        low = int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - LISTEN_PORTS_SPAN), max(1025, low))


def free_port(address: str = "127.0.0.1", candidates: range | None = None) -> int:
    """A TCP port on `address` that is free right now, outside the ephemeral range when one is
    free there (the component binds it moments later)."""
    pool = candidates if candidates is not None else listen_port_range()
    for port in random.sample(pool, min(64, len(pool))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        chosen: int = probe.getsockname()[1]
        return chosen


def kubeconfig_dict(server: str, ca: Path, client: CertPair, *, embed: bool) -> dict[str, Any]:
    """A kubeconfig with one cluster, user and context, all named `kaito-dev`."""

    def data(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    cluster: dict[str, str] = {"server": server}
    user: dict[str, str] = {}
    if embed:
        cluster["certificate-authority-data"] = data(ca)
        user["client-certificate-data"] = data(client.cert)
        user["client-key-data"] = data(client.key)
    else:
        cluster["certificate-authority"] = str(ca)
        user["client-certificate"] = str(client.cert)
        user["client-key"] = str(client.key)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT_NAME, "cluster": cluster}],
        "users": [{"name": CONTEXT_NAME, "user": user}],
        "contexts": [
            {"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": CONTEXT_NAME}}
        ],
        "current-context": CONTEXT_NAME,
    }


@dataclass
class Ports:
    """Every port the control plane listens on, all on 127.0.0.1."""

    etcd_client: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    controller_manager: int = field(default_factory=free_port)
    scheduler: int = field(default_factory=free_port)
    kwok: int = field(default_factory=free_port)


@dataclass
class ControlPlane:
    """One throw-away cluster rooted in `workdir` (PKI, etcd data, logs, kubeconfig, state).

    Use as a context manager, or `start()` / `stop()`. With `detach=True` the processes outlive
    this Python process (for `kaito dev cluster up`); `ControlPlane.stop_workdir` ends them.
    """

    workdir: Path
    binaries: Binaries = field(default_factory=find_binaries)
    detach: bool = False
    # Where the apiserver listens and what it advertises. Loopback (the default) keeps the cluster
    # private to this machine; a real node's bridge address (see realnode.py) lets pods reach it
    # through the `kubernetes` Service. Every client then uses that address.
    bind_address: str = LOOPBACK
    ports: Ports = field(default_factory=Ports)
    processes: list[Process] = field(default_factory=list)
    startup_s: float | None = None
    # Seconds from the start of `start()` until each readiness check passed, in order.
    startup_phases: dict[str, float] = field(default_factory=dict)
    # Further entries of the state file (e.g. the dev registry's host:port).
    extra_state: dict[str, Any] = field(default_factory=dict)
    _pki: ClusterPKI | None = None
    _began: float = 0.0

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (system:masters, certificates embedded): export it as KUBECONFIG."""
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.bind_address}:{self.ports.apiserver}"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def pki(self) -> ClusterPKI:
        if self._pki is None:
            raise ControlPlaneError("control plane not started")
        return self._pki

    def client(self, identity: str = "admin") -> ApiClient:
        """A REST client authenticated as one of the generated identities (admin by default)."""
        pair = self.pki.clients[identity]
        return ApiClient(
            self.bind_address, self.ports.apiserver, self.pki.ca.cert, pair.cert, pair.key
        )

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (kubectl, helm, the operator) that targets this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the official kubectl against this cluster, as a user would."""
        return subprocess.run(
            [str(kubectl_path()), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout_s,
            check=check,
        )

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout_s: float = 90.0) -> ControlPlane:
        """Start every component, wait until the cluster can run pods; stops all on failure."""
        self.binaries.require()
        began = self._began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        # Data left by a cluster that died unstopped was written under another PKI; start clean.
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        extra = () if self.bind_address == LOOPBACK else (self.bind_address,)
        self._pki = generate_pki(self.workdir / "pki", extra)
        self._write_kubeconfigs()
        deadline = began + timeout_s
        try:
            self._spawn("etcd", self._etcd_args())
            # The apiserver retries etcd on its own, so start it without waiting: it is the
            # slowest component to become ready and dominates start-up.
            self._spawn("kube-apiserver", self._apiserver_args())
            self._wait("etcd", self._etcd_healthy, deadline)
            self._wait("kube-apiserver", self._apiserver_ready, deadline)
            self._spawn("kube-controller-manager", self._controller_manager_args())
            self._spawn("kube-scheduler", self._scheduler_args())
            self._spawn("kwok", self._kwok_args())
            self._write_state()
            self._wait(
                "kube-controller-manager",
                lambda: _https_ok(self.ports.controller_manager, "/healthz"),
                deadline,
            )
            self._wait(
                "kube-scheduler", lambda: _https_ok(self.ports.scheduler, "/healthz"), deadline
            )
            self._wait("kwok", lambda: _http_ok(self.ports.kwok, "/healthz"), deadline)
            # Pods are rejected until the namespace's default ServiceAccount exists, which proves
            # the controller-manager's controllers run with their own credentials.
            self._wait(
                "kube-controller-manager",
                lambda: self.client().exists("/api/v1/namespaces/default/serviceaccounts/default"),
                deadline,
            )
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        self._write_state()
        return self

    def stop(self) -> None:
        """Stop components in reverse start order (SIGTERM, then SIGKILL) and drop etcd data."""
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop()
        self.processes.clear()
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    @classmethod
    def stop_workdir(cls, workdir: Path) -> bool:
        """Stop a cluster started by another process from its state file; False if none ran."""
        state = read_state(workdir)
        if state is None:
            return False
        stop_groups([int(pid) for pid in reversed(list(state["pids"].values()))])
        shutil.rmtree(workdir / "etcd", ignore_errors=True)
        (workdir / STATE_FILE).unlink(missing_ok=True)
        return True

    def note(self, **state: Any) -> None:
        """Record further entries in the state file (e.g. the registry in use)."""
        self.extra_state.update(state)
        self._write_state()

    # --- components --------------------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        process = Process(
            name,
            [str(self.binaries.path(name)), *args],
            self.log_dir / f"{name}.log",
            detach=self.detach,
            cwd=self.workdir,
        )
        self.processes.append(process)

    def _wait(self, name: str, probe: Callable[[], bool], deadline: float) -> None:
        process = next(p for p in self.processes if p.name == name)
        while True:
            if not process.alive():
                raise ControlPlaneError(
                    f"{name} exited with {process.popen.returncode}; log {process.log_path}:\n"
                    f"{process.log_tail()}"
                )
            with contextlib.suppress(Exception):
                if probe():
                    label = name if name not in self.startup_phases else f"{name} (controllers)"
                    self.startup_phases[label] = round(time.monotonic() - self._began, 2)
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} not ready in time; log {process.log_path}:\n{process.log_tail()}"
                )
            time.sleep(0.1)

    def _etcd_args(self) -> list[str]:
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        return [
            "--name=node0",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=node0={peer}",
            # Test data is thrown away, so durability only costs time.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _etcd_healthy(self) -> bool:
        return _http_ok(self.ports.etcd_client, "/health")

    def _apiserver_args(self) -> list[str]:
        pki = self.pki
        if self.bind_address == LOOPBACK:
            # Without an advertise address the apiserver looks for a default route, which a
            # sandbox may lack; loopback makes the `kubernetes` Endpoints invalid, hence "none".
            endpoints = ["--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        else:
            # The `kubernetes` Service's endpoint: what pods on a real node connect to.
            endpoints = [f"--advertise-address={self.bind_address}"]
        kubelet_client = pki.clients["kubelet-client"]
        front_proxy = pki.clients["front-proxy-client"]
        return [
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            f"--bind-address={self.bind_address}",
            f"--secure-port={self.ports.apiserver}",
            *endpoints,
            # Logs, exec and port-forward reach a real kubelet with a client certificate (the
            # kubelet authorizes it by webhook) and check the kubelet's serving certificate;
            # node names do not resolve here, so the apiserver dials the node's InternalIP.
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={pki.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--cert-dir={self.workdir / 'pki'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            # The aggregation layer (APIService objects, e.g. metrics-server's metrics.k8s.io):
            # proxied requests carry the caller in X-Remote-* headers, trusted only from the
            # front-proxy certificate's name. One CA for both is enough for a throw-away cluster.
            f"--requestheader-client-ca-file={pki.ca.cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT_USER}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={front_proxy.cert}",
            f"--proxy-client-key-file={front_proxy.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_private_key}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,"
            "ValidatingAdmissionPolicy",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]

    def _apiserver_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        admin = self.pki.clients["admin"]
        context.load_cert_chain(str(admin.cert), str(admin.key))
        url = f"https://{self.bind_address}:{self.ports.apiserver}/readyz"
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return bool(response.status == 200)

    def _component_kubeconfig(self, identity: str) -> Path:
        return self.workdir / f"{identity}.kubeconfig"

    def _controller_manager_args(self) -> list[str]:
        kubeconfig = self._component_kubeconfig("kube-controller-manager")
        pki = self.pki
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.controller_manager}",
            f"--cert-dir={self.workdir / 'pki' / 'kube-controller-manager'}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            "--leader-elect=false",
            # Each controller acts as its own ServiceAccount, which the bootstrap RBAC policy
            # allows to create ReplicaSets, Pods, and to garbage-collect.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_private_key}",
            f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # A dev cluster holds a handful of HPAs: syncing them every 5 s instead of 15 s
            # costs nothing here and lets an HPA act within one metrics-server resolution.
            f"--horizontal-pod-autoscaler-sync-period={HPA_SYNC_PERIOD_S}s",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        kubeconfig = self._component_kubeconfig("kube-scheduler")
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.scheduler}",
            f"--cert-dir={self.workdir / 'pki' / 'kube-scheduler'}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            "--leader-elect=false",
            "--v=1",
        ]

    def _kwok_args(self) -> list[str]:
        key, value = KWOK_NODE_ANNOTATION
        return [
            f"--kubeconfig={self._component_kubeconfig('kwok')}",
            f"--config={self.binaries.kwok_stages}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            "--node-lease-duration-seconds=40",
            "--cidr=10.244.0.0/16",
            "--node-ip=10.96.0.1",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
        ]

    # --- files -------------------------------------------------------------------------------

    def _write_kubeconfigs(self) -> None:
        pki = self.pki
        admin = kubeconfig_dict(self.server, pki.ca.cert, pki.clients["admin"], embed=True)
        _write_private(self.kubeconfig, yaml.safe_dump(admin, sort_keys=False))
        for identity in ("kube-controller-manager", "kube-scheduler", "kwok"):
            config = kubeconfig_dict(self.server, pki.ca.cert, pki.clients[identity], embed=False)
            _write_private(
                self._component_kubeconfig(identity), yaml.safe_dump(config, sort_keys=False)
            )

    def _write_state(self) -> None:
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "ports": vars(self.ports),
            "pids": {p.name: p.pid for p in self.processes},
            "startup_s": self.startup_s,
            "startup_phases": self.startup_phases,
            "binaries": str(self.binaries.directory),
            "bind_address": self.bind_address,
            **self.extra_state,
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))


def read_state(workdir: Path) -> dict[str, Any] | None:
    """State of the cluster recorded in `workdir`, or None when none is running there."""
    try:
        state: dict[str, Any] = json.loads((workdir / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not any(group_alive(int(pid)) for pid in state.get("pids", {}).values()):
        return None
    return state


def _write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def _http_ok(port: int, path: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return bool(response.status == 200)


def _https_ok(port: int, path: str) -> bool:
    # These components serve a self-signed certificate they generate at start; only liveness
    # matters here, not who answers on a loopback port we just chose.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=context, timeout=5) as r:
        return bool(r.status == 200)
