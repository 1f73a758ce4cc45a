"""One repository's endpoints: blobs (HEAD, whole and ranged GET, upload) and manifests."""

from __future__ import annotations

import hashlib
import mmap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kaito.runtime.oci.registry import (
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    ImageReference,
    RegistryError,
    check_response,
    registry_client,
)

READ_SIZE = 1 << 20
# The buffer a ranged read fills per step (and so the size of each file write): large
# enough that per-step Python overhead vanishes. Not larger: with 4 MiB writes the kernel's
# page-cache writes cost up to 10x the CPU in bench/weights runs (large folios to allocate),
# while 1 MiB writes cost the same every run.
RANGE_BUFFER = 1 << 20


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of a file, read in 4 MiB blocks (hashlib releases the GIL on them)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


@contextmanager
def _file_body(source: Path | bytes, size: int) -> Iterator[Any]:
    # A memoryview over an mmap is a bytes-like body: requests sends it without copying
    # the file into memory, and can send it again when the first try is answered with 401.
    if isinstance(source, bytes) or size == 0:
        yield source if isinstance(source, bytes) else b""
        return
    with source.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            yield view
        finally:
            view.release()


class BlobClient:
    """The blob and manifest endpoints of `reference`'s repository, safe to share by threads.

    Each thread gets its own oras client (a requests session is not thread-safe), each
    authenticated from the same Docker config.
    """

    def __init__(
        self, ref: str, *, docker_config: Path | None = None, insecure: bool | None = None
    ) -> None:
        self.reference = ImageReference.parse(ref)
        self._docker_config = docker_config
        self._insecure = insecure
        self._local = threading.local()

    def _oras(self) -> tuple[Any, Any]:
        cached = getattr(self._local, "client", None)
        if cached is None:
            client = registry_client(self.reference, self._docker_config, self._insecure)
            container = client.get_container(f"{self.reference.repository}:{self.reference.target}")
            cached = self._local.client = (client, container)
        return cached

    def _blob_url(self, digest: str) -> str:
        client, container = self._oras()
        return f"{client.prefix}://{container.get_blob_url(digest)}"

    def exists(self, digest: str) -> bool:
        """Whether the repository already holds `digest` (HEAD, no body transferred)."""
        client, _ = self._oras()
        response = client.do_request(self._blob_url(digest), "HEAD")
        if response.status_code not in (200, 404):
            raise RegistryError(f"HEAD blob {digest}: HTTP {response.status_code}")
        return bool(response.status_code == 200)

    def upload(self, source: Path | bytes, digest: str, size: int) -> bool:
        """Upload a file or bytes as `digest` unless the registry has it; True if sent."""
        if self.exists(digest):
            return False
        client, container = self._oras()
        start = client.do_request(
            f"{client.prefix}://{container.upload_blob_url()}",
            "POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        check_response(start, f"start upload {digest}")
        location = start.headers.get("Location", "")
        if not location:
            raise RegistryError(f"start upload {digest}: no Location header")
        if location.startswith("/"):
            location = f"{client.prefix}://{self.reference.registry}{location}"
        separator = "&" if "?" in location else "?"
        with _file_body(source, size) as body:
            response = client.do_request(
                f"{location}{separator}digest={digest}",
                "PUT",
                data=body,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
        check_response(response, f"upload {digest}")
        return True

    def download(self, digest: str, sink: Callable[[bytes], None]) -> int:
        """Stream a whole blob into `sink`; returns the bytes delivered (ranges: `read_range`)."""
        client, _ = self._oras()
        response = client.do_request(self._blob_url(digest), "GET", stream=True)
        try:
            if response.status_code != 200:
                raise RegistryError(f"blob {digest}: HTTP {response.status_code}")
            delivered = 0
            for chunk in response.iter_content(READ_SIZE):
                sink(chunk)
                delivered += len(chunk)
            return delivered
        finally:
            response.close()

    def read_range(
        self,
        digest: str,
        start: int,
        end: int,
        buffer: memoryview,
        sink: Callable[[int, memoryview], None],
    ) -> int:
        """Stream bytes [start, end) of a blob through `buffer` into `sink(offset, data)`.

        One ranged GET. The socket reads straight into the caller's reusable buffer (no new
        bytes object per read, the GIL released meanwhile), and `sink` gets a view of each
        filled piece with its offset in the blob. Returns the bytes delivered; fewer than
        asked means the connection ended early.
        """
        if end <= start:
            return 0
        client, _ = self._oras()
        headers = {"Range": f"bytes={start}-{end - 1}"}
        response = client.do_request(self._blob_url(digest), "GET", headers=headers, stream=True)
        try:
            if response.status_code != 206:
                raise RegistryError(
                    f"blob {digest} bytes {headers['Range'][6:]}: HTTP {response.status_code}"
                    " (the registry must answer Range requests with 206)"
                )
            served = response.headers.get("Content-Range", "").replace(" ", "")
            if served and not served.startswith(f"bytes{start}-"):
                raise RegistryError(f"blob {digest}: asked for bytes {start}-, got {served}")
            read = _readinto(response)
            position = start
            while position < end:
                count = read(buffer[: min(len(buffer), end - position)])
                if not count:
                    break
                sink(position, buffer[:count])
                position += count
            return position - start
        finally:
            response.close()

    def get_manifest(self, target: str) -> tuple[dict[str, Any], str]:
        """The manifest (or index) stored under a tag or digest, and its digest."""
        client, container = self._oras()
        url = f"{client.prefix}://{container.manifest_url(target)}"
        response = client.do_request(url, "GET", headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code != 200:
            raise RegistryError(f"manifest {self.reference}: HTTP {response.status_code}")
        digest = response.headers.get("Docker-Content-Digest") or (
            "sha256:" + hashlib.sha256(response.content).hexdigest()
        )
        document: dict[str, Any] = response.json()
        return document, str(digest)

    def image_manifest(self) -> tuple[dict[str, Any], str]:
        """The reference's image manifest; an index resolves to its linux/amd64 entry."""
        manifest, digest = self.get_manifest(self.reference.target)
        if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
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
                raise RegistryError(f"{self.reference}: the image index lists no manifests")
            manifest, digest = self.get_manifest(chosen["digest"])
        return manifest, digest

    def manifest_digest(self, target: str) -> str | None:
        """The digest the registry stores under a tag or digest, or None when it has none."""
        client, container = self._oras()
        url = f"{client.prefix}://{container.manifest_url(target)}"
        response = client.do_request(url, "HEAD", headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryError(f"HEAD manifest {target}: HTTP {response.status_code}")
        found = response.headers.get("Docker-Content-Digest")
        return str(found) if found else None

    def put_manifest(self, target: str, body: bytes, media_type: str) -> None:
        """PUT `body` verbatim, so the digest a caller computed is the one the registry keeps."""
        client, container = self._oras()
        url = f"{client.prefix}://{container.manifest_url(target)}"
        response = client.do_request(url, "PUT", data=body, headers={"Content-Type": media_type})
        check_response(response, f"upload manifest {self.reference.repository}:{target}")


def _readinto(response: Any) -> Callable[[memoryview], int]:
    """A readinto for a streamed requests response's body.

    urllib3's own readinto reads into a new bytes object and copies it; the http.client
    response beneath it reads from the socket into the caller's buffer. Use that one when the
    body is not content-encoded (blobs are raw bytes), else fall back to read-and-copy.
    """
    raw = response.raw
    inner = getattr(raw, "_fp", None)
    encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    if inner is not None and hasattr(inner, "readinto") and not encoded:
        return inner.readinto  # type: ignore[no-any-return]

    def copy_into(view: memoryview) -> int:
        data = raw.read(len(view))
        view[: len(data)] = data
        return len(data)

    return copy_into


def fetch_manifest(
    ref: str, *, docker_config: Path | None = None, insecure: bool | None = None
) -> tuple[dict[str, Any], str]:
    """The image manifest of `ref` (an index resolves to its linux/amd64 entry) and its digest."""
    return BlobClient(ref, docker_config=docker_config, insecure=insecure).image_manifest()
