"""OCI images that carry files under `/data`: build one gzip layer, push, pull and extract."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import ipaddress
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
GZIP_LAYERS = {MEDIA_LAYER_GZIP, DOCKER_LAYER_GZIP}
PLAIN_LAYERS = {MEDIA_LAYER_TAR, "application/vnd.docker.image.rootfs.diff.tar"}
ACCEPT = [MEDIA_MANIFEST, DOCKER_MANIFEST, MEDIA_INDEX, DOCKER_LIST]
DOCKER_HUB = "docker.io"
DATA_ROOT = "data"
DEFAULT_DOCKER_CONFIG = Path("/root/.docker/config.json")
_T = TypeVar("_T")


class RegistryError(RuntimeError):
    """A registry operation failed after its retries; the message says which and why."""


@dataclass(frozen=True)
class ImageReference:
    """registry/repository[:tag][@digest], with Docker Hub short names expanded."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ImageReference:
        rest, _, digest = ref.partition("@")
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, remainder
        else:
            registry, path = DOCKER_HUB, rest
            if "/" not in path:
                path = f"library/{path}"
        repository, colon, tag = path.rpartition(":")
        if not colon:
            repository, tag = path, ""
        if not repository:
            raise ValueError(f"not an image reference: {ref!r}")
        return cls(registry, repository, tag or (None if digest else "latest"), digest or None)

    @property
    def target(self) -> str:
        """Tag or digest: what the manifest URL ends with."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        tail = f":{self.tag}" if self.tag else ""
        return f"{self.registry}/{self.repository}{tail}" + (
            f"@{self.digest}" if self.digest else ""
        )


def is_loopback_registry(registry: str) -> bool:
    """127.0.0.1 / ::1 / localhost registries speak plain HTTP unless told otherwise."""
    host = registry.rsplit(":", 1)[0].strip("[]") if registry.count(":") <= 1 else registry
    if host in ("localhost",) or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return registry.startswith("[::1]")


def docker_credentials(registry: str, config_path: Path | None) -> tuple[str, str] | None:
    """(user, password) for `registry` from a Docker config JSON (the mounted push secret)."""
    path = config_path
    if path is None:
        env = os.environ.get("DOCKER_CONFIG")
        path = Path(env) / "config.json" if env else DEFAULT_DOCKER_CONFIG
    if not path.is_file():
        return None
    document = json.loads(path.read_text(encoding="utf-8"))
    auths: Mapping[str, Any] = document.get("auths", {}) if isinstance(document, dict) else {}
    names = {registry, f"https://{registry}", f"http://{registry}"}
    if registry == DOCKER_HUB:
        names |= {"https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"}
    for key, entry in auths.items():
        if key.rstrip("/") not in {n.rstrip("/") for n in names} or not isinstance(entry, dict):
            continue
        if entry.get("username") and entry.get("password") is not None:
            return str(entry["username"]), str(entry["password"])
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
    return None


def _client(reference: ImageReference, docker_config: Path | None, insecure: bool | None) -> Any:
    import oras.auth.token
    import oras.provider

    plain_http = is_loopback_registry(reference.registry) if insecure is None else insecure
    credentials = docker_credentials(reference.registry, docker_config)

    class _ChallengeAuth(oras.auth.token.TokenAuth):  # type: ignore[misc]
        # oras' token backend cannot answer a `Basic` challenge (plain registries with
        # htpasswd); answer it here and leave Bearer challenges to the token flow.
        def load_configs(self, container: Any, configs: Any = None) -> None:
            return None

        def authenticate_request(
            self, original: Any, headers: dict[str, str], refresh: bool = False
        ) -> tuple[dict[str, str], bool]:
            challenge = original.headers.get("Www-Authenticate", "")
            if challenge.lower().startswith("basic"):
                if not getattr(self, "_basic_auth", None):
                    return headers, False
                return {**(headers or {}), "Authorization": f"Basic {self._basic_auth}"}, True
            result: tuple[dict[str, str], bool] = super().authenticate_request(
                original, headers, refresh
            )
            return result

    class _Registry(oras.provider.Registry):  # type: ignore[misc]
        # oras retries with sleeps of 3..83 s inside every request; our callers retry whole
        # operations with their own budget instead.
        def do_request(self, *args: Any, **kwargs: Any) -> Any:
            return oras.provider.Registry.do_request.__wrapped__(self, *args, **kwargs)

    client = _Registry(hostname=reference.registry, insecure=plain_http)
    auth = _ChallengeAuth()
    auth.session = client.session
    auth.prefix = client.prefix
    auth._tls_verify = client._tls_verify
    if credentials is not None:
        auth.set_basic_auth(*credentials)
    client.auth = auth
    return client


def _retry(
    what: str, attempts: int, backoff_s: float, action: Callable[[], _T], log: Callable[[str], None]
) -> _T:
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            last = exc
            if attempt < attempts:
                log(f"{what} failed (attempt {attempt}/{attempts}): {exc}; retrying")
                time.sleep(backoff_s * 2 ** (attempt - 1))
    raise RegistryError(f"{what} failed after {attempts} attempts: {last}") from last


def _check(response: Any, what: str) -> None:
    if response.status_code not in (200, 201, 202):
        raise RegistryError(f"{what}: HTTP {response.status_code} {response.text[:300]}")


def build_data_layer(files: Mapping[str, Path], workdir: Path) -> tuple[Path, str, str, int]:
    """A reproducible gzip'd tar of `files` under data/; returns path, digest, diff_id, size."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo(DATA_ROOT)
        directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(directory)
        for name in sorted(files):
            info = tarfile.TarInfo(f"{DATA_ROOT}/{name}")
            info.size, info.mode, info.mtime = files[name].stat().st_size, 0o644, 0
            with files[name].open("rb") as fh:
                tar.addfile(info, fh)
    tar_bytes = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    compressed = gzip.compress(tar_bytes, compresslevel=9, mtime=0)
    layer = workdir / "layer.tar.gz"
    layer.write_bytes(compressed)
    return layer, "sha256:" + hashlib.sha256(compressed).hexdigest(), diff_id, len(compressed)


@dataclass(frozen=True)
class PushResult:
    reference: str
    digest: str
    size: int


def push_data_image(
    ref: str,
    files: Mapping[str, Path],
    *,
    annotations: Mapping[str, str] | None = None,
    docker_config: Path | None = None,
    insecure: bool | None = None,
    attempts: int = 4,
    backoff_s: float = 1.0,
    log: Callable[[str], None] = lambda _message: None,
) -> PushResult:
    """Push `files` as /data/<name> in a one-layer image (upstream's adapter layout)."""
    reference = ImageReference.parse(ref)
    with tempfile.TemporaryDirectory(prefix="kaito-oci-") as tmp:
        workdir = Path(tmp)
        layer_path, layer_digest, diff_id, layer_size = build_data_layer(files, workdir)
        config_bytes = json.dumps(
            {"rootfs": {"type": "layers", "diff_ids": [diff_id]}}, separators=(",", ":")
        ).encode()
        config_path = workdir / "config.json"
        config_path.write_bytes(config_bytes)
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        config_desc = {
            "mediaType": MEDIA_CONFIG,
            "digest": config_digest,
            "size": len(config_bytes),
        }
        layer_desc = {"mediaType": MEDIA_LAYER_GZIP, "digest": layer_digest, "size": layer_size}
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config_desc,
            "layers": [layer_desc],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()

        def push_once() -> None:
            from kaito.runtime.oci.blobs import BlobClient

            blobs = BlobClient(ref, docker_config=docker_config, insecure=insecure)
            blobs.upload(layer_path, layer_digest, layer_size)
            blobs.upload(config_path, config_digest, len(config_bytes))
            # PUT our exact bytes (oras re-serializes the dict), so the digest we report is
            # the digest the registry stores.
            blobs.put_manifest(reference.target, manifest_bytes, MEDIA_MANIFEST)

        _retry(f"push {reference}", attempts, backoff_s, push_once, log)
    digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    return PushResult(str(reference), digest, layer_size)


@dataclass(frozen=True)
class PullResult:
    reference: str
    digest: str
    files: list[Path]
    annotations: dict[str, str]


def fetch_manifest(
    ref: str, *, docker_config: Path | None = None, insecure: bool | None = None
) -> tuple[dict[str, Any], str]:
    """The image manifest (an index resolves to its linux/amd64 entry) and its digest."""
    reference = ImageReference.parse(ref)
    client = _client(reference, docker_config, insecure)

    def get(target: str) -> tuple[dict[str, Any], str]:
        container = client.get_container(f"{reference.repository}:{target}")
        url = f"{client.prefix}://{container.manifest_url()}"
        response = client.do_request(url, "GET", headers={"Accept": ", ".join(ACCEPT)})
        if response.status_code != 200:
            raise RegistryError(f"manifest {reference}: HTTP {response.status_code}")
        digest = response.headers.get("Docker-Content-Digest") or (
            "sha256:" + hashlib.sha256(response.content).hexdigest()
        )
        document: dict[str, Any] = response.json()
        return document, digest

    manifest, digest = get(reference.target)
    if manifest.get("mediaType") in (MEDIA_INDEX, DOCKER_LIST) or "manifests" in manifest:
        entries = manifest.get("manifests", [])
        chosen = next(
            (
                m
                for m in entries
                if m.get("platform", {}).get("os") == "linux"
                and m.get("platform", {}).get("architecture") == "amd64"
            ),
            entries[0] if entries else None,
        )
        if chosen is None:
            raise RegistryError(f"{reference}: the image index lists no manifests")
        manifest, digest = get(chosen["digest"])
    return manifest, digest


def pull_image_data(
    ref: str,
    dest: Path,
    *,
    docker_config: Path | None = None,
    insecure: bool | None = None,
    attempts: int = 3,
    backoff_s: float = 1.0,
) -> PullResult:
    """Extract every layer's `/data` into `dest` (upstream's puller); digests are verified.

    Files land in a temporary directory next to `dest` first, so an interrupted pull never
    leaves a partial adapter or dataset that looks complete.
    """
    reference = ImageReference.parse(ref)
    manifest, digest = _retry(
        f"pull {reference}",
        attempts,
        backoff_s,
        lambda: fetch_manifest(ref, docker_config=docker_config, insecure=insecure),
        lambda _m: None,
    )
    from kaito.runtime.oci.blobs import BlobClient

    blobs = BlobClient(ref, docker_config=docker_config, insecure=insecure)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-pull-", dir=dest.parent))
    try:
        rootfs = staging / "rootfs"
        rootfs.mkdir()
        for layer in manifest.get("layers", []):
            blob = staging / "blob"
            hasher = hashlib.sha256()
            with blob.open("wb") as fh:

                def sink(chunk: bytes, fh: Any = fh, hasher: Any = hasher) -> None:
                    hasher.update(chunk)
                    fh.write(chunk)

                blobs.download(layer["digest"], sink)
            if "sha256:" + hasher.hexdigest() != layer["digest"]:
                raise RegistryError(f"blob {layer['digest']}: digest mismatch")
            media = layer.get("mediaType", MEDIA_LAYER_GZIP)
            if media not in GZIP_LAYERS | PLAIN_LAYERS:
                raise RegistryError(f"layer {layer['digest']}: unsupported media type {media}")
            _extract(blob, rootfs)
            blob.unlink()
        data = rootfs / DATA_ROOT
        if not data.is_dir():
            raise RegistryError(f"{reference}: the image has no /{DATA_ROOT} directory")
        dest.mkdir(parents=True, exist_ok=True)
        files = []
        for path in sorted(p for p in data.rglob("*") if p.is_file()):
            target = dest / path.relative_to(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            files.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PullResult(str(reference), digest, files, dict(manifest.get("annotations", {})))


def _extract(blob: Path, rootfs: Path) -> None:
    # mode "r:*" reads gzip and plain tar alike; the data filter refuses absolute paths,
    # links out of the tree and device files, so a hostile layer cannot escape `rootfs`.
    with tarfile.open(blob, mode="r:*") as tar:
        for member in tar.getmembers():
            name = member.name.lstrip("./")
            if Path(name).name.startswith(".wh."):
                # Whiteouts delete lower-layer files; honour the simple (non-opaque) form.
                victim = rootfs / Path(name).parent / Path(name).name[4:]
                if victim.is_dir():
                    shutil.rmtree(victim)
                else:
                    victim.unlink(missing_ok=True)
                continue
            tar.extract(member, rootfs, filter="data")
