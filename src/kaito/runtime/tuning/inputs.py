"""Training inputs from URLs (resumable, retried, checksummed) and OCI images into a data dir."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

MANIFEST_NAME = ".kaito-inputs.json"
CHUNK = 1 << 20
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class InputError(RuntimeError):
    """An input could not be fetched; the message names the source and the reason."""


@dataclass(frozen=True)
class FetchedInput:
    """One fetched input: where it came from, where it is, and its digest."""

    source: str
    path: Path
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
        }


def file_name_for(url: str, index: int) -> str:
    """Upstream's rule: the URL path's basename without query or fragment."""
    name = Path(unquote(urlparse(url).path)).name
    return name or f"download-{index}"


def _expected_digest(url: str) -> str | None:
    # A `#sha256=<hex>` fragment pins the content (pip's convention); the server never sees it.
    fragment = urlparse(url).fragment
    if fragment.startswith("sha256="):
        return "sha256:" + fragment.split("=", 1)[1].lower()
    return None


def fetch_urls(
    urls: list[str],
    data_dir: Path,
    *,
    retries: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
) -> list[FetchedInput]:
    """Download each URL into `data_dir`, resuming partial files; record digests in a manifest."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fetched = []
    for index, url in enumerate(urls):
        target = data_dir / file_name_for(url, index)
        fetched.append(
            fetch_url(
                url,
                target,
                retries=retries,
                backoff_s=backoff_s,
                timeout_s=timeout_s,
                headers=headers,
            )
        )
    record_inputs(data_dir, fetched)
    return fetched


def fetch_url(
    url: str,
    target: Path,
    *,
    retries: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
) -> FetchedInput:
    """Fetch one URL (http, https or file) to `target` atomically; retry and resume over Range."""
    parsed = urlparse(url)
    expected = _expected_digest(url)
    if parsed.scheme == "file":
        source = Path(unquote(parsed.path))
        if not source.is_file():
            raise InputError(f"{url}: no such file")
        partial = target.with_name(f".{target.name}.part")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, partial)
        return _finish(url, partial, target, expected)
    if parsed.scheme not in ("http", "https"):
        raise InputError(f"{url}: unsupported URL scheme {parsed.scheme!r} (http, https, file)")
    import httpx

    partial = target.with_name(f".{target.name}.part")
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        offset = partial.stat().st_size if partial.exists() else 0
        request_headers = dict(headers or {})
        if offset:
            request_headers["Range"] = f"bytes={offset}-"
        try:
            with (
                httpx.Client(timeout=timeout_s, follow_redirects=True) as client,
                client.stream("GET", url, headers=request_headers) as response,
            ):
                if response.status_code == 416 and offset:
                    # The partial file already holds everything the server has.
                    return _finish(url, partial, target, expected)
                if response.status_code in RETRY_STATUS:
                    last_error = f"HTTP {response.status_code}"
                    continue
                if response.status_code not in (200, 206):
                    raise InputError(f"{url}: HTTP {response.status_code}; not retrying")
                resumed = response.status_code == 206 and offset > 0
                with partial.open("ab" if resumed else "wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
                expected_size = response.headers.get("content-length")
                if expected_size is not None:
                    total = (offset if resumed else 0) + int(expected_size)
                    if partial.stat().st_size < total:
                        last_error = "the connection closed before the whole body arrived"
                        continue
                return _finish(url, partial, target, expected)
        except httpx.HTTPError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
    raise InputError(f"{url}: unreachable after {retries + 1} attempts ({last_error})")


def _finish(url: str, partial: Path, target: Path, expected: str | None) -> FetchedInput:
    digest = hashlib.sha256()
    with partial.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    actual = "sha256:" + digest.hexdigest()
    if expected is not None and actual != expected:
        partial.unlink(missing_ok=True)
        raise InputError(f"{url}: checksum mismatch: expected {expected}, got {actual}")
    size = partial.stat().st_size
    os.replace(partial, target)
    return FetchedInput(url, target, actual, size)


def record_inputs(data_dir: Path, fetched: list[FetchedInput]) -> Path:
    """Write (merge) the manifest of fetched inputs that lineage metadata later reads."""
    path = data_dir / MANIFEST_NAME
    existing = read_inputs(data_dir)
    by_path = {entry["path"]: entry for entry in existing}
    for item in fetched:
        by_path[str(item.path)] = item.to_json()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(list(by_path.values()), indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_inputs(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        return []
    value = json.loads(path.read_text(encoding="utf-8"))
    return list(value) if isinstance(value, list) else []


def fetch_image(
    reference: str,
    data_dir: Path,
    *,
    docker_config: Path | None = None,
    insecure: bool | None = None,
) -> list[FetchedInput]:
    """Extract an image's `/data` into `data_dir` (upstream's dataset image contract)."""
    from kaito.runtime.oci.image import pull_image_data

    pulled = pull_image_data(reference, data_dir, docker_config=docker_config, insecure=insecure)
    fetched = [
        FetchedInput(f"{reference}@{pulled.digest}", path, _digest_of(path), path.stat().st_size)
        for path in sorted(p for p in data_dir.rglob("*") if p.is_file())
        if not path.name.startswith(".")
    ]
    record_inputs(data_dir, fetched)
    return fetched


def _digest_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()
