"""The bottom of the OCI layer: references, errors, credentials, the client, retries, media types.

Every other module under `kaito.runtime.oci` talks to a registry through `registry_client`
(one oras client per thread, as `blobs.BlobClient` keeps them) and names media types from
here, so no module restates them and none reaches into another's private names.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kaito.contract.files import PLAIN_HTTP_REGISTRIES_ENV

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
GZIP_LAYERS = frozenset({MEDIA_LAYER_GZIP, DOCKER_LAYER_GZIP})
PLAIN_LAYERS = frozenset({MEDIA_LAYER_TAR, DOCKER_LAYER_TAR})
INDEX_TYPES = frozenset({MEDIA_INDEX, DOCKER_LIST})
MANIFEST_ACCEPT = ", ".join([MEDIA_MANIFEST, DOCKER_MANIFEST, MEDIA_INDEX, DOCKER_LIST])
# Every kaito artifact (adapter image or weights) names its model here.
ANNOTATION_MODEL = "sh.kaito.model.name"
DOCKER_HUB = "docker.io"
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


def plain_http_listed(registry: str, listed: str) -> bool:
    """Whether `registry` (host[:port]) is in `listed`, comma-separated host[:port] entries:
    an entry with a port matches that host and port only, one without matches any port."""
    host, port = split_host_port(registry)
    for entry in (e.strip() for e in listed.split(",")):
        if not entry:
            continue
        entry_host, entry_port = split_host_port(entry)
        if entry_host.lower() == host.lower() and entry_port in (None, port):
            return True
    return False


def split_host_port(registry: str) -> tuple[str, str | None]:
    """("host", "port") of host[:port], "[v6]:port" or a bare IPv6 address (port None)."""
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") and rest[1:] else None
    if registry.count(":") == 1:
        host, _, port = registry.partition(":")
        return host, port or None
    return registry, None


def is_plain_http_registry(registry: str, environ: Mapping[str, str] | None = None) -> bool:
    """Loopback registries, and those the operator lists in KAITO_PLAIN_HTTP_REGISTRIES."""
    env = os.environ if environ is None else environ
    return is_loopback_registry(registry) or plain_http_listed(
        registry, env.get(PLAIN_HTTP_REGISTRIES_ENV, "")
    )


def docker_credentials(registry: str, config_path: Path | None) -> tuple[str, str] | None:
    """(user, password) for `registry` from a Docker config JSON (the mounted push secret)."""
    path = config_path
    if path is None:
        env = os.environ.get("DOCKER_CONFIG")
        path = Path(env) / "config.json" if env else DEFAULT_DOCKER_CONFIG
    try:
        if not path.is_file():
            return None
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        # A non-root pod (runAsUser 10001) cannot look into the image's /root: no config there.
        return None
    document = json.loads(text)
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


def registry_client(
    reference: ImageReference, docker_config: Path | None, insecure: bool | None
) -> Any:
    """An oras client for `reference`'s registry, authenticated from a Docker config.

    Not thread-safe (a requests session inside): `blobs.BlobClient` keeps one per thread.
    """
    import oras.auth.token
    import oras.provider

    plain_http = is_plain_http_registry(reference.registry) if insecure is None else insecure
    credentials = docker_credentials(reference.registry, docker_config)

    class ChallengeAuth(oras.auth.token.TokenAuth):  # type: ignore[misc]
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

    class Registry(oras.provider.Registry):  # type: ignore[misc]
        # oras retries with sleeps of 3..83 s inside every request; our callers retry whole
        # operations with their own budget instead (`retry`).
        def do_request(self, *args: Any, **kwargs: Any) -> Any:
            return oras.provider.Registry.do_request.__wrapped__(self, *args, **kwargs)

    client = Registry(hostname=reference.registry, insecure=plain_http)
    auth = ChallengeAuth()
    auth.session = client.session
    auth.prefix = client.prefix
    auth._tls_verify = client._tls_verify
    if credentials is not None:
        auth.set_basic_auth(*credentials)
    client.auth = auth
    return client


def retry(
    what: str,
    attempts: int,
    backoff_s: float,
    action: Callable[[], _T],
    log: Callable[[str], None] = lambda _message: None,
) -> _T:
    """Run `action` up to `attempts` times with exponential backoff; RegistryError at the end."""
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


def check_response(response: Any, what: str) -> None:
    """RegistryError unless the registry accepted the request (200, 201, 202)."""
    if response.status_code not in (200, 201, 202):
        raise RegistryError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
