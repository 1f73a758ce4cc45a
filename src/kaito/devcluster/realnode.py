"""One real CPU node (kubelet + containerd + runc + CNI bridge) beside the kwok fake nodes.

The node lives on a Linux bridge with a private address (`NODE_IP`), which is also the address
the apiserver listens on when a real node is wanted, so pods reach it through the `kubernetes`
Service. Its processes run in a private mount namespace (`nodehost.py`); what is unavoidably
host-wide (the bridge, sysctls, iptables chains, cgroups, mount points) is recorded in
`STATE_DIR` before it changes and undone by `stop()`, `kaito dev cluster down`, or the next
start after a crash. A lock keeps it to one real node per machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kaito.devcluster.binaries import bin_dir, kaito_home
from kaito.devcluster.client import ApiClient, ApiError
from kaito.devcluster.controlplane import SERVICE_CIDR, ControlPlane, free_port, kubeconfig_dict
from kaito.devcluster.nodehost import cgroup_processes, kill_all, namespace_processes
from kaito.devcluster.pki import KUBELET_CLIENT_USER, issue_certificate
from kaito.devcluster.process import Process

BRIDGE = "kaito0"
NODE_IP = "10.245.0.1"
# The bridge, the node and its pods; kwok's fake pods use 10.244.0.0/16, the Services
# controlplane.SERVICE_CIDR. Tests may connect to exactly these two ranges besides loopback.
NODE_NETWORK = "10.245.0.0/24"
POD_RANGE = ("10.245.0.16", "10.245.0.254")
NODE_NAME = "kaito-real-node"
CLUSTER_DOMAIN = "cluster.local"
NODE_LABEL = "kaito.sh/real-node"
# Only pods that tolerate this land on the real node: kwok nodes are untainted, and the cluster
# tier's placeholder pods (images that do not exist) must never be pulled here.
NODE_TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
STATE_DIR = Path("/run/kaito-real-node")
CGROUP_ROOT = "/kaito-real-node"
PAUSE_IMAGE = "kaito.local/pause:1"
PROBE_IMAGE = "kaito.local/probe:2"
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
COMMANDS = ("containerd", "ctr", "runc", "iptables", "ip6tables", "ip", "mount", "unshare")
NODE_BINARIES = ("kubelet", "kube-proxy", "pause", "probe")
# Fixed paths the kubelet and CNI plugins use whatever their flags say; bound to the workdir.
BIND_TARGETS = {
    "kubelet": "/var/lib/kubelet",
    "cni": "/var/lib/cni",
    "pod-logs": "/var/log/pods",
    "container-logs": "/var/log/containers",
}
# What the kubelet (kernel tunables), the CNI bridge (forwarding) and kube-proxy may change.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
)
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")
FORWARD_CHAIN = "KAITO-REAL-NODE"
# Chains the kubelet, kube-proxy, the CNI plugins and this module create; others' are left alone.
OUR_CHAIN_PREFIXES = ("KUBE-", "CNI-", "KAITO-")


class RealNodeError(RuntimeError):
    """The real node could not start (missing prerequisite, busy machine, component failure)."""


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run a real node (empty when it can)."""
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    missing += [f"{CNI_BIN_DIR}/{p}" for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).is_file()]
    missing += [f"{bin_dir()}/{b}" for b in NODE_BINARIES if not os.access(bin_dir() / b, os.X_OK)]
    if os.geteuid() != 0:
        missing.append("root (the kubelet, containerd and the bridge need it)")
    return missing


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def _chains(tool: str, table: str) -> list[str]:
    result = _run(tool, "-w", "-t", table, "-S", check=False)
    if result.returncode != 0:
        return []
    return [line.split()[1] for line in result.stdout.splitlines() if line.startswith("-N ")]


def _remove_chains(tool: str, table: str, keep: Sequence[str]) -> None:
    """Delete every user chain not in `keep`, with the rules that jump to it."""
    result = _run(tool, "-w", "-t", table, "-S", check=False)
    if result.returncode != 0:
        return
    lines = result.stdout.splitlines()
    new = {
        chain
        for line in lines
        if line.startswith("-N ") and (chain := line.split()[1]).startswith(OUR_CHAIN_PREFIXES)
    } - set(keep)
    if not new:
        return
    for line in lines:
        words = shlex.split(line)
        if words[:1] == ["-A"] and words[1] not in new and _jumps_to(words, new):
            _run(tool, "-w", "-t", table, "-D", *words[1:], check=False)
    for chain in new:
        _run(tool, "-w", "-t", table, "-F", chain, check=False)
    for chain in new:
        _run(tool, "-w", "-t", table, "-X", chain, check=False)


def _jumps_to(words: list[str], chains: set[str]) -> bool:
    return any(
        w in ("-j", "-g") and i + 1 < len(words) and words[i + 1] in chains
        for i, w in enumerate(words)
    )


# --- host state: claimed, recorded, undone -------------------------------------------------


@dataclass
class HostClaim:
    """The machine-wide lock plus the record of every host change the real node makes."""

    lock_fd: int
    record: dict[str, Any]

    @property
    def record_path(self) -> Path:
        return STATE_DIR / "record.json"

    def save(self) -> None:
        self.record_path.write_text(json.dumps(self.record, indent=2))

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)
        self.lock_fd = -1


def claim_host(workdir: Path, timeout_s: float = 600.0) -> HostClaim:
    """Take the one-real-node-per-machine lock, undo a crashed run's leftovers, make the bridge.

    Waits up to `timeout_s` for another real node on this machine to go away. Call before the
    control plane starts when its apiserver binds to `NODE_IP`.
    """
    missing = missing_prerequisites()
    if missing:
        raise RealNodeError(
            f"cannot run a real node, missing: {', '.join(missing)}; "
            "run tools/setup.d/50-real-node.sh"
        )
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATE_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                owner = (
                    (STATE_DIR / "record.json").read_text()
                    if (STATE_DIR / "record.json").exists()
                    else ""
                )
                raise RealNodeError(
                    f"another real node runs on this machine (lock {STATE_DIR / 'lock'}): "
                    f"{owner[:300]}"
                ) from None
            time.sleep(1)
    stale = STATE_DIR / "record.json"
    if stale.exists():
        # The lock is ours, so whoever wrote this record is gone without cleaning up.
        with contextlib.suppress(json.JSONDecodeError, OSError):
            undo_host(json.loads(stale.read_text()))
        stale.unlink(missing_ok=True)
    claim = HostClaim(fd, {"workdir": str(workdir), "pid": os.getpid(), "created": []})
    try:
        _record_and_prepare(claim, workdir)
    except BaseException:
        undo_host(claim.record)
        claim.record_path.unlink(missing_ok=True)
        claim.release()
        raise
    return claim


def _record_and_prepare(claim: HostClaim, workdir: Path) -> None:
    record = claim.record
    record["sysctls"] = {name: _read_sysctl(name) for name in SYSCTLS}
    record["chains"] = {
        tool: {table: _chains(tool, table) for table in TABLES} for tool in IPTABLES
    }
    record["mnt_ns_file"] = str(workdir / "node" / "mnt-ns")
    record["cgroups"] = []
    record["bridge"] = False
    claim.save()  # before the first change, so a crash from here on is undone next time
    if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        record["bridge"] = True
        claim.save()
    _run("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    # Service addresses route to the bridge, from the bridge's address: the host (apiserver
    # calling a webhook Service, tests) reaches ClusterIPs without a default route, and a
    # ClusterIP without endpoints is never sent towards the default gateway.
    _run("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
    # Forwarding is needed for Service traffic between pods (the CNI plugin turns it on); pods
    # may not use it to leave the node's network.
    for tool in ("iptables",):
        _run(tool, "-w", "-N", FORWARD_CHAIN, check=False)
        _run(tool, "-w", "-F", FORWARD_CHAIN)
        _run(tool, "-w", "-A", FORWARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "REJECT")
        _run(tool, "-w", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN)
    for hierarchy in sorted(Path("/sys/fs/cgroup").iterdir()):
        target = hierarchy / CGROUP_ROOT.lstrip("/")
        if not (hierarchy / "cgroup.procs").exists() or target.exists():
            continue
        target.mkdir()
        record["cgroups"].append(str(target))
        if hierarchy.name == "cpuset":
            # A v1 cpuset child starts empty and admits no task until given CPUs and memory.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (target / knob).write_text((hierarchy / knob).read_text())
    for mountpoint in BIND_TARGETS.values():
        if not Path(mountpoint).exists():
            Path(mountpoint).mkdir(parents=True)
            record["created"].append(mountpoint)
    claim.save()


def undo_host(record: Mapping[str, Any]) -> list[str]:
    """Undo every recorded host change; returns what could not be undone (for the log)."""
    problems: list[str] = []
    kill_all(cgroup_processes(CGROUP_ROOT))
    with contextlib.suppress(OSError, ValueError):
        inode = int(Path(record.get("mnt_ns_file", "")).read_text())
        kill_all(namespace_processes(inode, {os.getpid()}))
    # Give the killed processes a moment to leave their cgroups.
    deadline = time.monotonic() + 10
    while cgroup_processes(CGROUP_ROOT) and time.monotonic() < deadline:
        time.sleep(0.1)
    chains = record.get("chains", {})
    for tool in IPTABLES:
        if shutil.which(tool) is None:
            continue
        for table in TABLES:
            _remove_chains(tool, table, chains.get(tool, {}).get(table, []))
    for target in sorted(record.get("cgroups", []), key=len, reverse=True):
        for child in sorted(Path(target).glob("**/"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                child.rmdir()
        if Path(target).exists():
            problems.append(f"cgroup {target} still in use")
    _run("ip", "route", "del", SERVICE_CIDR, "dev", BRIDGE, check=False)
    if record.get("bridge") and _run("ip", "link", "del", BRIDGE, check=False).returncode != 0:
        problems.append(f"bridge {BRIDGE} could not be deleted")
    for name, value in (record.get("sysctls") or {}).items():
        if value is not None and _read_sysctl(name) != value:
            try:
                _sysctl_path(name).write_text(value)
            except OSError as error:
                problems.append(f"sysctl {name}: {error}")
    for target in reversed(record.get("created", [])):
        with contextlib.suppress(OSError):
            Path(target).rmdir()
    return problems


def host_leftovers(record: Mapping[str, Any]) -> list[str]:
    """Recorded host changes still in place (empty after a clean `undo_host`)."""
    left = []
    if record.get("bridge") and _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        left.append(f"bridge {BRIDGE}")
    for name, value in (record.get("sysctls") or {}).items():
        if value is not None and _read_sysctl(name) != value:
            left.append(f"sysctl {name}={_read_sysctl(name)} (was {value})")
    chains = record.get("chains", {})
    for tool in IPTABLES:
        for table in TABLES:
            before = set(chains.get(tool, {}).get(table, []))
            left += [
                f"{tool} -t {table} chain {c}"
                for c in _chains(tool, table)
                if c.startswith(OUR_CHAIN_PREFIXES) and c not in before
            ]
    left += [f"cgroup {c}" for c in record.get("cgroups", []) if Path(c).exists()]
    left += [f"directory {d}" for d in record.get("created", []) if Path(d).exists()]
    left += [f"process {pid}" for pid in cgroup_processes(CGROUP_ROOT)]
    return left


# --- images --------------------------------------------------------------------------------


def image_parts(files: Mapping[str, Path], entrypoint: Sequence[str]) -> tuple[bytes, bytes]:
    """(config JSON, uncompressed layer tar) of a one-layer image holding `files`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for name, source in sorted(files.items()):
            info = tarfile.TarInfo(name.lstrip("/"))
            data = source.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            layer.addfile(info, io.BytesIO(data))
    layer_bytes = buffer.getvalue()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint)},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"],
        },
    }
    return json.dumps(config, sort_keys=True).encode(), layer_bytes


def write_image_archive(path: Path, reference: str, config: bytes, layer: bytes) -> Path:
    """A `docker save` style tar that `ctr images import` reads as image `reference`."""
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    layer_name = f"{hashlib.sha256(layer).hexdigest()}/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [reference], "Layers": [layer_name]}]
    members = {
        config_name: config,
        layer_name: layer,
        "manifest.json": json.dumps(manifest).encode(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def node_images(directory: Path) -> dict[str, Path]:
    """Archives of the pause and probe images built from hack/build-real-node.sh's binaries."""
    archives = {}
    for reference, binary in ((PAUSE_IMAGE, "pause"), (PROBE_IMAGE, "probe")):
        config, layer = image_parts({f"/{binary}": bin_dir() / binary}, [f"/{binary}"])
        archives[reference] = write_image_archive(
            directory / f"{binary}.tar", reference, config, layer
        )
    return archives


# --- the node --------------------------------------------------------------------------------


def _toml_string(value: str) -> str:
    return json.dumps(value)


@dataclass
class RealNode:
    """A real node joined to `plane`, with its state under `workdir` and a persistent containerd
    image store in `cache_dir` (warm pulls across runs; one node per machine uses it at once)."""

    plane: ControlPlane
    workdir: Path
    claim: HostClaim
    name: str = NODE_NAME
    detach: bool = False
    cache_dir: Path = field(default_factory=lambda: kaito_home() / "real-node")
    process: Process | None = None
    startup_s: float | None = None
    ports: dict[str, int] = field(default_factory=dict)
    # host:port -> plain HTTP, for registries trusted before or after start().
    trusted: dict[str, bool] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.workdir / "node"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def registries_dir(self) -> Path:
        return self.state_dir / "certs.d"

    @property
    def run_dir(self) -> str:
        # Inside the namespace's tmpfs /run: short (unix socket paths are limited) and private.
        return "/run/kaito-node"

    @property
    def containerd_socket(self) -> str:
        return f"{self.run_dir}/containerd.sock"

    def trust_registry(self, host: str, *, plain_http: bool = True) -> None:
        """Let containerd pull from `host` (e.g. 127.0.0.1:5000), over plain HTTP by default."""
        self.trusted[host] = plain_http
        if self.registries_dir.is_dir():
            self._write_registry(host, plain_http=plain_http)

    def _write_registry(self, host: str, *, plain_http: bool) -> None:
        directory = self.registries_dir / host
        directory.mkdir(parents=True, exist_ok=True)
        scheme = "http" if plain_http else "https"
        (directory / "hosts.toml").write_text(
            f'server = "{scheme}://{host}"\n\n[host."{scheme}://{host}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )

    def start(self, timeout_s: float = 120.0) -> RealNode:
        """Write certificates and configuration, start the node, wait until it is Ready."""
        if self.plane.bind_address != NODE_IP:
            raise RealNodeError(
                f"the apiserver listens on {self.plane.bind_address}; pods reach it only when "
                f"the ControlPlane starts with bind_address={NODE_IP!r} (after claim_host)"
            )
        began = time.monotonic()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.log_dir.mkdir(parents=True)
        self.registries_dir.mkdir(parents=True)
        for host, plain_http in self.trusted.items():
            self._write_registry(host, plain_http=plain_http)
        api = self.plane.client()
        _bind_kubelet_api_admin(api)
        config = self._write_files()
        self.process = Process(
            "real-node",
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                sys.executable,
                "-m",
                "kaito.devcluster.nodehost",
                str(config),
            ],
            self.log_dir / "nodehost.log",
            detach=self.detach,
            pass_fds=(self.claim.lock_fd,),
        )
        self.claim.record["nodehost_pid"] = self.process.pid
        self.claim.save()
        try:
            api.wait_for(self._ready, timeout_s=timeout_s, interval_s=0.5, what="the real node")
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise RealNodeError(f"the real node stopped:\n{self.logs_tail()}")
        try:
            node = self.plane.client().get(f"/api/v1/nodes/{self.name}")
        except ApiError:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def logs_tail(self, lines: int = 15) -> str:
        parts = []
        for log in sorted(self.log_dir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop the node's processes and containers and delete its Node object.

        The host changes (bridge, iptables, cgroups, sysctls) stay until `release_host(claim)`,
        which the claim's owner calls after the control plane that listens on the bridge stops.
        """
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.stop(grace_s=30)
            self.process = None
        with contextlib.suppress(Exception):
            self.plane.client().request("DELETE", f"/api/v1/nodes/{self.name}")

    # --- files -------------------------------------------------------------------------------

    def _write_files(self) -> Path:
        plane, state = self.plane, self.state_dir
        pki_dir = state / "pki"
        pki_dir.mkdir()
        ca = plane.pki.ca
        kubelet_client = issue_certificate(
            ca, pki_dir / "kubelet-client", f"system:node:{self.name}", ["system:nodes"]
        )
        kubelet_serving = issue_certificate(
            ca,
            pki_dir / "kubelet-serving",
            self.name,
            server_names=(NODE_IP, self.name),
            client=False,
        )
        proxy_client = issue_certificate(ca, pki_dir / "kube-proxy", "system:kube-proxy")
        kubelet_kubeconfig = state / "kubelet.kubeconfig"
        proxy_kubeconfig = state / "kube-proxy.kubeconfig"
        for path, pair in ((kubelet_kubeconfig, kubelet_client), (proxy_kubeconfig, proxy_client)):
            path.write_text(
                yaml.safe_dump(kubeconfig_dict(plane.server, ca.cert, pair, embed=False))
            )
            path.chmod(0o600)
        self.ports = {
            "kubelet_healthz": free_port(),
            "proxy_healthz": free_port(),
            "proxy_metrics": free_port(),
        }
        containerd_root = self.cache_dir / "containerd"
        containerd_root.mkdir(parents=True, exist_ok=True)
        containerd_config = state / "containerd.toml"
        containerd_config.write_text(self._containerd_toml(containerd_root))
        cni_dir = state / "cni" / "net.d"
        cni_dir.mkdir(parents=True)
        (cni_dir / "10-kaito.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        kubelet_config = state / "kubelet.yaml"
        kubelet_config.write_text(
            yaml.safe_dump(self._kubelet_config(ca.cert, kubelet_serving.cert, kubelet_serving.key))
        )
        proxy_config = state / "kube-proxy.yaml"
        proxy_config.write_text(yaml.safe_dump(self._proxy_config(proxy_kubeconfig)))
        images = node_images(self.cache_dir / "images")
        binds = [[str(state / key), target] for key, target in BIND_TARGETS.items()]
        bins = bin_dir()
        host_config = {
            "binds": binds,
            "run_dir": self.run_dir,
            "log_dir": str(self.log_dir),
            "mnt_ns_file": self.claim.record["mnt_ns_file"],
            "ready_file": str(state / "started"),
            "cgroup_root": CGROUP_ROOT,
            "containerd_socket": self.containerd_socket,
            "images": [str(p) for p in images.values()],
            # kube-proxy's identity may read Services, all the cluster DNS needs.
            "dns": {
                "address": NODE_IP,
                "domain": CLUSTER_DOMAIN,
                "server": plane.bind_address,
                "port": plane.ports.apiserver,
                "ca": str(ca.cert),
                "cert": str(proxy_client.cert),
                "key": str(proxy_client.key),
            },
            "containerd": ["containerd", f"--config={containerd_config}"],
            "kubelet": [
                str(bins / "kubelet"),
                f"--config={kubelet_config}",
                f"--kubeconfig={kubelet_kubeconfig}",
                "--root-dir=/var/lib/kubelet",
                f"--hostname-override={self.name}",
                f"--node-ip={NODE_IP}",
                f"--node-labels={NODE_LABEL}=true",
                "--v=1",
            ],
            "kube_proxy": [str(bins / "kube-proxy"), f"--config={proxy_config}", "--v=1"],
        }
        path = state / "nodehost.json"
        path.write_text(json.dumps(host_config, indent=2))
        return path

    def _containerd_toml(self, root: Path) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return "\n".join(
            [
                "version = 2",
                f"root = {_toml_string(str(root))}",
                f"state = {_toml_string(self.run_dir + '/containerd')}",
                "[grpc]",
                f"  address = {_toml_string(self.containerd_socket)}",
                "[debug]",
                '  level = "warn"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f"  path = {_toml_string(str(root / 'opt'))}",
                f"[{cri}]",
                f"  sandbox_image = {_toml_string(PAUSE_IMAGE)}",
                # root here lacks CAP_SYS_RESOURCE: runc cannot lower a container's
                # oom_score_adj below its own, which fails every sandbox without this.
                "  restrict_oom_score_adj = true",
                '  stream_server_address = "127.0.0.1"',
                f"[{cri}.containerd]",
                '  snapshotter = "overlayfs"',
                '  default_runtime_name = "runc"',
                f"[{cri}.containerd.runtimes.runc]",
                '  runtime_type = "io.containerd.runc.v2"',
                f"[{cri}.containerd.runtimes.runc.options]",
                "  SystemdCgroup = false",
                f"[{cri}.cni]",
                f"  bin_dir = {_toml_string(str(CNI_BIN_DIR))}",
                f"  conf_dir = {_toml_string(str(self.state_dir / 'cni' / 'net.d'))}",
                f"[{cri}.registry]",
                f"  config_path = {_toml_string(str(self.registries_dir))}",
                "",
            ]
        )

    def _cni_config(self) -> dict[str, Any]:
        start, end = POD_RANGE
        return {
            "cniVersion": "0.4.0",
            "name": "kaito-real-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # No masquerading: pods talk to the node's network and Services only.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [
                            [
                                {
                                    "subnet": NODE_NETWORK,
                                    "rangeStart": start,
                                    "rangeEnd": end,
                                    "gateway": NODE_IP,
                                }
                            ]
                        ],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.state_dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _kubelet_config(self, ca: Path, cert: Path, key: Path) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports["kubelet_healthz"],
            "tlsCertFile": str(cert),
            "tlsPrivateKeyFile": str(key),
            # No anonymous access: the apiserver presents its kubelet client certificate and
            # every request is authorized by SubjectAccessReview.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            # This kernel mounts cgroup v1; everything the kubelet creates lives below our root.
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": CGROUP_ROOT,
            "failCgroupV1": False,
            "failSwapOn": False,
            "registerWithTaints": [NODE_TAINT],
            # The node host answers Service names on the bridge address (nodehost.ClusterDns).
            "clusterDNS": [NODE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "serializeImagePulls": False,
            # Images are the slow part of a warm run: never collect them (100 disables GC).
            "imageGCHighThresholdPercent": 100,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "maxPods": 30,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "logging": {"format": "text"},
        }

    def _proxy_config(self, kubeconfig: Path) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.name,
            "clusterCIDR": NODE_NETWORK,
            "healthzBindAddress": f"127.0.0.1:{self.ports['proxy_healthz']}",
            "metricsBindAddress": f"127.0.0.1:{self.ports['proxy_metrics']}",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            # Zero leaves the host's conntrack sysctls as they are.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            # Localhost NodePorts would need route_localnet on every interface.
            "iptables": {"localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        }


def _bind_kubelet_api_admin(api: ApiClient) -> None:
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "kaito-dev:kubelet-api-admin"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:kubelet-api-admin",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBELET_CLIENT_USER}
        ],
    }
    try:
        api.create(binding)
    except ApiError as error:
        if error.status != 409:
            raise


def release_host(claim: HostClaim) -> list[str]:
    """Undo the claim's recorded changes, drop the record, release the lock."""
    problems = undo_host(claim.record)
    claim.record_path.unlink(missing_ok=True)
    claim.release()
    return problems


def stop_detached(owner: Path, timeout_s: float = 60.0) -> list[str] | None:
    """Stop the real node `kaito dev cluster up --real-node` started with state in `owner`;
    None when none of it runs (another cluster's or a test session's node is left alone)."""
    record_path = STATE_DIR / "record.json"
    if not record_path.exists():
        return None
    record = json.loads(record_path.read_text())
    if record.get("workdir") != str(owner):
        return None
    pid = record.get("nodehost_pid")
    if pid:
        from kaito.devcluster.process import stop_groups

        stop_groups([int(pid)], grace_s=30)
    # The node host held the lock; with it gone the lock is free, and ours while we undo.
    claim = claim_host_lock_only(timeout_s)
    claim.record = record
    return release_host(claim)


def claim_host_lock_only(timeout_s: float) -> HostClaim:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATE_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return HostClaim(fd, {})
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RealNodeError("the real node's lock is still held") from None
            time.sleep(0.5)
