"""The dev cluster's image registry: Debian's docker-registry, plain HTTP on 127.0.0.1."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from kaito.devcluster.binaries import kaito_home
from kaito.devcluster.controlplane import free_port
from kaito.devcluster.process import Process

BINARY = "docker-registry"


class RegistryError(RuntimeError):
    """The registry is not installed or did not answer."""


def storage_dir() -> Path:
    """Blobs survive `kaito dev cluster down`, so images built once stay pushed."""
    return kaito_home() / "registry" / "dev"


def start_registry(workdir: Path, *, detach: bool, timeout_s: float = 30.0) -> tuple[Process, str]:
    """Start a registry with storage in `storage_dir()`; returns it and its host:port."""
    binary = shutil.which(BINARY)
    if binary is None:
        raise RegistryError(
            f"{BINARY} is not installed; run tools/setup.d/20-registry.sh "
            "(apt-get install docker-registry)"
        )
    port = free_port()
    storage = storage_dir()
    storage.mkdir(parents=True, exist_ok=True)
    config = workdir / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    process = Process(
        "registry",
        [binary, "serve", str(config)],
        workdir / "logs" / "registry.log",
        detach=detach,
    )
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        if not process.alive():
            raise RegistryError(f"the registry exited:\n{process.log_tail()}")
        try:
            with opener.open(f"http://{host}/v2/", timeout=2) as response:
                if response.status == 200:
                    return process, host
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            process.stop()
            raise RegistryError(f"the registry did not answer in {timeout_s} s")
        time.sleep(0.1)
