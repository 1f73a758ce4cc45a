"""Runs inside a real node's private mount namespace: containerd, kubelet and kube-proxy.

Started by `RealNode` as `unshare --mount --propagation private -- python -m
kaito.devcluster.nodehost CONFIG`. It mounts a tmpfs on /run and binds the node's state
directories (under the cluster's workdir) over the fixed paths the kubelet and the CNI plugins
use, so sockets, pod logs, overlay and volume mounts vanish with the namespace. On SIGTERM it
stops the kubelet, kills every container, then containerd and its shims. Standard library only:
it must start fast and import nothing of the operator.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STOP_GRACE_S = 10.0
DNS_TTL_S = 5
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _log(message: str) -> None:
    print(f"[nodehost] {time.strftime('%H:%M:%S')} {message}", flush=True)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def cgroup_processes(cgroup_root: str) -> list[int]:
    """Every process in `cgroup_root` and below, in any v1 hierarchy (the pids one suffices)."""
    found: set[int] = set()
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        base = hierarchy / cgroup_root.lstrip("/")
        if not base.is_dir():
            continue
        for procs in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(line) for line in procs.read_text().split())
    return sorted(found)


def namespace_processes(mnt_inode: int, exclude: set[int]) -> list[int]:
    """Processes whose mount namespace is the one with inode `mnt_inode` (shims, containerd)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid in exclude:
            continue
        with contextlib.suppress(OSError):
            if os.stat(entry / "ns" / "mnt").st_ino == mnt_inode:
                found.append(pid)
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def service_of(qname: str, domain: str) -> tuple[str, str] | None:
    """(name, namespace) of `<name>.<namespace>.svc.<domain>`, else None."""
    labels = qname.rstrip(".").lower().split(".")
    suffix = ["svc", *domain.split(".")]
    if len(labels) != 2 + len(suffix) or labels[2:] != suffix:
        return None
    if not all(DNS_LABEL.fullmatch(label) for label in labels[:2]):
        return None
    return labels[0], labels[1]


def dns_reply(query: bytes, resolve: Callable[[str], str | None]) -> bytes | None:
    """The reply to one DNS query: an A record when `resolve` knows the name, NODATA for other
    types of a known name, NXDOMAIN otherwise; None for what is not a one-question query."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, offset = [], 12
    while offset < len(query) and query[offset] != 0:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode(errors="replace"))
        offset += 1 + length
    question_end = offset + 5
    if question_end > len(query):
        return None
    qtype = struct.unpack("!H", query[offset + 1 : offset + 3])[0]
    question = query[12:question_end]
    ip = resolve(".".join(labels))
    recursion = flags & 0x0100
    if ip is None:
        return struct.pack("!HHHHHH", ident, 0x8403 | recursion, 1, 0, 0, 0) + question
    if qtype != 1:  # the name exists, but has only an A record
        return struct.pack("!HHHHHH", ident, 0x8400 | recursion, 1, 0, 0, 0) + question
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, DNS_TTL_S, 4) + socket.inet_aton(ip)
    return struct.pack("!HHHHHH", ident, 0x8400 | recursion, 1, 1, 0, 0) + question + record


class ClusterDns:
    """Answers A queries for `<service>.<namespace>.svc.<domain>` with the Service's ClusterIP.

    The cluster's only DNS: pods (kopf's in-cluster login uses `kubernetes.default.svc`) find
    Services by name. Other names get NXDOMAIN: nothing is forwarded beyond the cluster.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.address: str = config["address"]
        self.domain: str = config["domain"]
        self.host, self.port = config["server"], int(config["port"])
        self.context = ssl.create_default_context(cafile=config["ca"])
        self.context.load_cert_chain(config["cert"], config["key"])
        self.cache: dict[tuple[str, str], tuple[float, str | None]] = {}
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((self.address, 53))

    def cluster_ip(self, name: str, namespace: str) -> str | None:
        now = time.monotonic()
        cached = self.cache.get((namespace, name))
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        connection = http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=5
        )
        try:
            # kube-proxy's role may list Services, not get one.
            connection.request(
                "GET",
                f"/api/v1/namespaces/{namespace}/services?fieldSelector=metadata.name%3D{name}",
            )
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        ip = None
        if response.status == 200:
            for item in json.loads(body).get("items", []):
                ip = item.get("spec", {}).get("clusterIP")
            if ip in ("None", ""):
                ip = None
        self.cache[(namespace, name)] = (now, ip)
        return ip

    def lookup(self, qname: str) -> str | None:
        service = service_of(qname, self.domain)
        return None if service is None else self.cluster_ip(*service)

    def _resolve(self, qname: str) -> str | None:
        try:
            return self.lookup(qname)
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def serve(self) -> None:
        while True:
            try:
                query, peer = self.socket.recvfrom(512)
            except OSError:
                return
            reply = dns_reply(query, self._resolve)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.socket.sendto(reply, peer)


class NodeHost:
    """The node's processes and the order they start and stop in."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def prepare(self) -> None:
        # A tmpfs /run gives containerd and the CNI plugins (netns pins in /run/netns) a private,
        # self-cleaning place; the rest are bind mounts of directories under the workdir.
        _mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run")
        for source, target in self.config["binds"]:
            Path(source).mkdir(parents=True, exist_ok=True)
            _mount("--bind", source, target)
        Path(self.config["run_dir"]).mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, argv: list[str]) -> None:
        log = open(Path(self.config["log_dir"]) / f"{name}.log", "ab")  # noqa: SIM115
        self.children[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        _log(f"started {name} (pid {self.children[name].pid})")

    def wait_socket(self, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not Path(path).exists():
            process = self.children["containerd"]
            if process.poll() is not None:
                raise RuntimeError(f"containerd exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd socket {path} did not appear in {timeout_s} s")
            time.sleep(0.05)

    def import_images(self) -> None:
        for archive in self.config["images"]:
            subprocess.run(
                [
                    "ctr",
                    f"--address={self.config['containerd_socket']}",
                    "--namespace=k8s.io",
                    "images",
                    "import",
                    "--no-unpack",
                    archive,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            _log(f"imported {archive}")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        Path(self.config["mnt_ns_file"]).write_text(str(os.stat("/proc/self/ns/mnt").st_ino))
        self.prepare()
        self.spawn("containerd", self.config["containerd"])
        self.wait_socket(self.config["containerd_socket"], 30)
        self.import_images()
        dns = ClusterDns(self.config["dns"])
        threading.Thread(target=dns.serve, name="cluster-dns", daemon=True).start()
        self.spawn("kubelet", self.config["kubelet"])
        self.spawn("kube-proxy", self.config["kube_proxy"])
        Path(self.config["ready_file"]).write_text("ready")
        while not self.stopping:
            for name, process in self.children.items():
                if process.poll() is not None:
                    _log(f"{name} exited with {process.returncode}; stopping the node")
                    self.stopping = True
                    break
            time.sleep(0.2)
        return self.shutdown()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def shutdown(self) -> int:
        # The kubelet would restart containers it sees die, so it goes first; then the
        # containers (by cgroup), then containerd and whatever shims it left in this namespace.
        for name in ("kubelet", "kube-proxy"):
            self._stop(name)
        kill_all(cgroup_processes(self.config["cgroup_root"]))
        self._stop("containerd")
        me = os.getpid()
        inode = os.stat("/proc/self/ns/mnt").st_ino
        deadline = time.monotonic() + STOP_GRACE_S
        while left := namespace_processes(inode, {me}):
            kill_all(left)
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        _log("stopped")
        return 0

    def _stop(self, name: str) -> None:
        process = self.children.get(name)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_GRACE_S)


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    host = NodeHost(config)
    try:
        return host.run()
    except BaseException as error:
        _log(f"failed: {error!r}")
        host.shutdown()
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
