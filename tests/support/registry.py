"""A real OCI registry (Debian's docker-registry) on 127.0.0.1 for runtime tests.

Use `start_registry()` directly, or the `oci_registry` / `oci_registry_auth` fixtures that
`tests/runtime/tuning/conftest.py` (and any later conftest) re-exports with
`from tests.support.registry import oci_registry, oci_registry_auth`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kaito.devcluster.controlplane import free_port

REGISTRY_BINARY = "docker-registry"
HTPASSWD_BINARY = "htpasswd"
INSTALL_HINT = "install it with tools/setup.d/20-registry.sh (apt-get install docker-registry)"


@dataclass(frozen=True)
class LocalRegistry:
    """A running registry; `host` is <address>:<port> (127.0.0.1 unless asked), plain HTTP."""

    host: str
    storage: Path
    username: str | None = None
    password: str | None = None

    def ref(self, repository: str, tag: str = "latest") -> str:
        return f"{self.host}/{repository}:{tag}"

    def docker_config(self, directory: Path) -> Path:
        """A Docker config JSON holding this registry's credentials (like a push secret)."""
        auths = {}
        if self.username is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            auths[self.host] = {"auth": token}
        path = directory / "config.json"
        path.write_text(json.dumps({"auths": auths}), encoding="utf-8")
        return path


def registry_binary() -> str | None:
    """The registry executable, or None (a failure in CI, a skip elsewhere)."""
    found = shutil.which(REGISTRY_BINARY)
    if found is None:
        message = f"{REGISTRY_BINARY} is not installed; {INSTALL_HINT}"
        if os.environ.get("KAITO_REQUIRE_CLUSTER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _htpasswd_line(username: str, password: str) -> str:
    tool = shutil.which(HTPASSWD_BINARY)
    if tool is not None:
        out = subprocess.run(
            [tool, "-Bbn", username, password], check=True, capture_output=True, text=True
        )
        return out.stdout.strip()
    try:
        import bcrypt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        pytest.skip("neither htpasswd (apache2-utils) nor the bcrypt package is installed")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    return f"{username}:{hashed}"


def port_is_free(address: str, port: int) -> bool:
    """Whether nothing listens on `port`; a previous registry's closing connections do not
    count (the registry, like every Go listener, binds with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def start_registry(
    workdir: Path,
    *,
    username: str | None = None,
    password: str | None = None,
    address: str = "127.0.0.1",
    storage: Path | None = None,
    port: int | None = None,
) -> Iterator[LocalRegistry]:
    """Run a registry with storage under `workdir` (or `storage`) until the block exits.

    `address` is where it listens: loopback, or the real node's bridge address for registries
    that pods use from inside (tests never bind anything wider). `port` is the one to prefer;
    any free port when it is taken (or None).
    """
    binary = registry_binary()
    assert binary is not None
    port = port if port is not None and port_is_free(address, port) else free_port(address)
    storage = storage or workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    lines = [
        "version: 0.1",
        "log: {level: error, accesslog: {disabled: true}}",
        "storage:",
        f"  filesystem: {{rootdirectory: {storage}}}",
        "  delete: {enabled: true}",
        f"http: {{addr: '{address}:{port}'}}",
    ]
    if username is not None and password is not None:
        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(_htpasswd_line(username, password) + "\n", encoding="utf-8")
        lines.append(f"auth: {{htpasswd: {{realm: kaito-test, path: {htpasswd}}}}}")
    config = workdir / "config.yml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log = (workdir / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    host = f"{address}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"registry exited: {(workdir / 'registry.log').read_text()[-2000:]}"
                )
            try:
                status = httpx.get(f"http://{host}/v2/", timeout=1).status_code
                if status in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("registry did not answer on /v2/ within 30 s")
            time.sleep(0.1)
        yield LocalRegistry(host, storage, username, password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """An anonymous registry shared by the session."""
    with start_registry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture(scope="session")
def oci_registry_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A registry that demands htpasswd (Basic) credentials: user `kaito`, password `s3cret`."""
    with start_registry(
        tmp_path_factory.mktemp("registry-auth"), username="kaito", password="s3cret"
    ) as registry:
        yield registry


def push_image(
    registry: LocalRegistry, repository: str, tag: str, config: bytes, layers: list[bytes]
) -> str:
    """Push an image (config plus uncompressed tar layers) with the registry API; its ref."""
    auth = (registry.username, registry.password or "") if registry.username is not None else None
    base = f"http://{registry.host}/v2/{repository}"

    def blob(data: bytes) -> dict[str, object]:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        started = httpx.post(f"{base}/blobs/uploads/", auth=auth, timeout=30)
        started.raise_for_status()
        location = started.headers["Location"]
        if location.startswith("/"):
            location = f"http://{registry.host}{location}"
        separator = "&" if "?" in location else "?"
        httpx.put(
            f"{location}{separator}digest={digest}", content=data, auth=auth, timeout=60
        ).raise_for_status()
        return {"digest": digest, "size": len(data)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}
            for layer in layers
        ],
    }
    httpx.put(
        f"{base}/manifests/{tag}",
        content=json.dumps(manifest).encode(),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        auth=auth,
        timeout=30,
    ).raise_for_status()
    return registry.ref(repository, tag)
