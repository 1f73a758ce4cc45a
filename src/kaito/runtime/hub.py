"""Download a model from a Hugging Face-style hub at a pinned revision, with token and digests."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_ENV = "HF_TOKEN"
ENDPOINT_ENV = "HF_ENDPOINT"
# Same exclusions as the weights packager: original checkpoints and Apple-only weights.
EXCLUDED_PREFIXES = ("original/", "metal/")


class HubError(RuntimeError):
    """The hub refused a request, or a downloaded file did not match its published digest."""


@dataclass(frozen=True)
class HubDownload:
    repo: str
    revision: str  # the commit the hub resolved the requested revision to (when it says)
    files: list[Path]
    downloaded_bytes: int


def hub_token(token: str | None = None) -> str | None:
    """An explicit token, else `$HF_TOKEN` (the mounted secret), else none (public models)."""
    return token or os.environ.get(TOKEN_ENV) or None


def _safe(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not name:
        raise HubError(f"refusing file name {name!r}")
    return name


def list_files(
    client: httpx.Client, endpoint: str, repo: str, revision: str
) -> tuple[list[str], dict[str, str], str]:
    """(file names, LFS sha256 per file, resolved commit) from the hub's model-info API."""
    url = f"{endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"
    response = client.get(url, params={"blobs": "true"})
    if response.status_code != 200:
        raise HubError(f"{url}: HTTP {response.status_code} {response.text[:200]}")
    info: dict[str, Any] = response.json()
    names, digests = [], {}
    for sibling in info.get("siblings", []):
        name = str(sibling["rfilename"])
        if name.startswith(EXCLUDED_PREFIXES):
            continue
        names.append(_safe(name))
        lfs = sibling.get("lfs") or {}
        if lfs.get("sha256"):
            digests[name] = str(lfs["sha256"])
    return sorted(names), digests, str(info.get("sha") or revision)


def download_from_hub(
    repo: str,
    dest: Path,
    *,
    revision: str = "main",
    files: Sequence[str] | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    workers: int = 4,
    attempts: int = 3,
    timeout_s: float = 60.0,
    log: Callable[[str], None] = lambda _message: None,
) -> HubDownload:
    """Download `repo` at `revision` into `dest`: `<endpoint>/<repo>/resolve/<rev>/<file>`.

    Without `files`, the list comes from the model-info API, which also pins the revision to
    a commit and gives LFS files' sha256 (checked after download). Each file is written to
    `<name>.incomplete` and resumed from there with a Range request after an interruption.
    """
    base = (endpoint or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")
    secret = hub_token(token)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    dest.mkdir(parents=True, exist_ok=True)
    with httpx.Client(headers=headers, follow_redirects=True, timeout=timeout_s) as client:
        digests: dict[str, str] = {}
        resolved = revision
        if files is None:
            names, digests, resolved = list_files(client, base, repo, revision)
        else:
            names = [_safe(name) for name in files]
        counted = [0]
        counter = threading.Lock()

        def fetch(name: str) -> Path:
            url = f"{base}/{repo}/resolve/{quote(resolved, safe='')}/{quote(name)}"
            target = dest / name
            for attempt in range(1, attempts + 1):
                try:
                    received = _fetch_file(client, url, target, digests.get(name))
                    with counter:
                        counted[0] += received
                    return target
                except (httpx.HTTPError, HubError) as exc:
                    if attempt == attempts or (isinstance(exc, HubError) and "HTTP 4" in str(exc)):
                        raise HubError(f"{repo}/{name}: {exc}") from exc
                    log(f"{name}: {exc}; retrying")
                    time.sleep(0.5 * 2 ** (attempt - 1))
            raise AssertionError("unreachable")

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            paths = list(pool.map(fetch, names))
    return HubDownload(repo, resolved, paths, counted[0])


def _fetch_file(client: httpx.Client, url: str, target: Path, sha256: str | None) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".incomplete")
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    received = 0
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:  # the partial file is already whole
            pass
        elif response.status_code not in (200, 206):
            raise HubError(f"{url}: HTTP {response.status_code}")
        else:
            # A server that ignores Range sends the whole file: start over rather than append.
            mode = "ab" if response.status_code == 206 else "wb"
            with partial.open(mode) as fh:
                for chunk in response.iter_bytes(1 << 20):
                    fh.write(chunk)
                    received += len(chunk)
    if sha256 is not None:
        digest = hashlib.sha256()
        with partial.open("rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
        if digest.hexdigest() != sha256:
            partial.unlink()
            raise HubError(f"{url}: sha256 mismatch")
    os.replace(partial, target)
    return received
