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
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STOP_GRACE_S = 10.0


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
