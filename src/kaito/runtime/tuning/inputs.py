"""Training inputs into a data dir: guarded, resumable, checksummed URL downloads; OCI images."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from kaito.runtime.tuning.urls import (
    DEADLINE_ENV,
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_BYTES,
    MAX_BYTES_ENV,
    AllowList,
    BlockedURLError,
    HostLookupError,
    Target,
    check_url,
    redact_text,
    redact_url,
)

MANIFEST_NAME = ".kaito-inputs.json"
CHUNK = 1 << 20
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 10
MAX_NAME = 128
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class InputError(RuntimeError):
    """An input could not be fetched; the message names the source (redacted) and the reason."""


class _FatalError(InputError):
    """A failure that another attempt cannot fix (refused address, cap, checksum, 4xx)."""


@dataclass(frozen=True)
class FetchedInput:
    """One fetched input: where it came from (redacted), where it is, and its digest."""

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


@dataclass(frozen=True)
class DownloadPolicy:
    """Where downloads may go and how much they may take; `from_env` reads `KAITO_TUNING_*`.

    - allow: hosts, addresses and networks exempt from the internal-address check
      [`KAITO_TUNING_ALLOWED_HOSTS`, comma-separated; empty].
    - max_bytes: bytes one `fetch_urls` call may write, all files together
      [`KAITO_TUNING_MAX_DOWNLOAD_BYTES`; 50 GiB].
    - deadline_s: seconds one URL may take, retries and redirects included
      [`KAITO_TUNING_DOWNLOAD_DEADLINE_SECONDS`; 4 h].
    """

    allow: AllowList = field(default_factory=AllowList)
    max_bytes: int = DEFAULT_MAX_BYTES
    deadline_s: float = DEFAULT_DEADLINE_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DownloadPolicy:
        env = os.environ if environ is None else environ
        try:
            max_bytes = int(env.get(MAX_BYTES_ENV) or DEFAULT_MAX_BYTES)
            deadline = float(env.get(DEADLINE_ENV) or DEFAULT_DEADLINE_S)
        except ValueError as exc:
            raise InputError(f"{MAX_BYTES_ENV} / {DEADLINE_ENV}: {exc}") from None
        return cls(AllowList.from_env(env), max_bytes, deadline)

    @classmethod
    def on_this_machine(cls, environ: Mapping[str, str] | None = None) -> DownloadPolicy:
        """`from_env` plus this machine's loopback: local mode's rule (`kaito run`), where a
        dataset served on localhost is the user's own; every other internal range stays shut."""
        policy = cls.from_env(environ)
        loopback = AllowList.parse(["localhost", "127.0.0.0/8", "::1/128"])
        allow = AllowList(
            policy.allow.names | loopback.names, policy.allow.networks + loopback.networks
        )
        return replace(policy, allow=allow)


def file_name_for(url: str, index: int) -> str:
    """Upstream's rule, made safe: the URL path's basename without query or fragment.

    Only letters, digits, `.`, `_` and `-` survive; a leading dot is dropped (hidden names
    are the downloader's own: partial files and the manifest), so no name can leave the data
    directory or shadow a bookkeeping file. An empty result is `download-<index>`.
    """
    try:
        path = urlsplit(url).path
    except ValueError:
        path = ""
    name = _UNSAFE_NAME.sub("_", unquote(path).replace("\\", "/").rsplit("/", 1)[-1])
    name = name.lstrip(".")[-MAX_NAME:].lstrip(".")
    return name or f"download-{index}"


def file_names_for(urls: Sequence[str]) -> list[str]:
    """A distinct safe name per URL: a repeated basename gets `-<index>` before its suffix."""
    names: list[str] = []
    taken: set[str] = set()
    for index, url in enumerate(urls):
        name = file_name_for(url, index)
        if name.lower() in taken:
            stem, dot, suffix = name.partition(".")
            name = f"{stem}-{index}{dot}{suffix}"
        taken.add(name.lower())
        names.append(name)
    return names


def _expected_digest(url: str) -> str | None:
    # A `#sha256=<hex>` fragment pins the content (pip's convention); the server never sees it.
    fragment = urlsplit(url).fragment
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
    policy: DownloadPolicy | None = None,
) -> list[FetchedInput]:
    """Download each URL into `data_dir` under a distinct safe name; record digests."""
    policy = policy or DownloadPolicy.from_env()
    data_dir.mkdir(parents=True, exist_ok=True)
    root = data_dir.resolve()
    fetched: list[FetchedInput] = []
    for url, name in zip(urls, file_names_for(urls), strict=True):
        target = data_dir / name
        if target.resolve().parent != root:
            raise InputError(f"{redact_url(url)}: file name {name!r} leaves {data_dir}")
        used = sum(item.size for item in fetched)
        item = fetch_url(
            url,
            target,
            retries=retries,
            backoff_s=backoff_s,
            timeout_s=timeout_s,
            headers=headers,
            policy=replace(policy, max_bytes=policy.max_bytes - used),
        )
        fetched.append(item)
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
    policy: DownloadPolicy | None = None,
) -> FetchedInput:
    """Fetch one http(s) URL to `target` atomically; retry and resume over Range.

    Every hop (the URL and each redirect) is checked by `check_url` before a connection is
    opened, and the connection goes to the address that was checked. The whole fetch,
    retries included, ends at `policy.deadline_s`; a body over `policy.max_bytes` fails.
    Messages carry the URL redacted (no user info, no query).
    """
    policy = policy or DownloadPolicy.from_env()
    shown = redact_url(url)
    try:
        check_url(url, policy.allow, resolve=False)
    except BlockedURLError as exc:
        raise InputError(str(exc)) from None
    expected = _expected_digest(url)
    deadline = time.monotonic() + policy.deadline_s
    partial = target.with_name(f".{target.name}.part")
    target.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            pause = backoff_s * 2 ** (attempt - 1)
            if time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)
        try:
            outcome = _attempt(url, partial, headers or {}, policy, deadline, timeout_s)
        except _FatalError:
            partial.unlink(missing_ok=True)
            raise
        except (OSError, http.client.HTTPException) as exc:
            last_error = redact_text(f"{type(exc).__name__}: {exc}")
            continue
        if outcome is None:
            return _finish(url, partial, target, expected)
        last_error = outcome
    if time.monotonic() >= deadline:
        partial.unlink(missing_ok=True)
        raise InputError(f"{shown}: not done within the {policy.deadline_s:g} s deadline")
    raise InputError(f"{shown}: unreachable after {retries + 1} attempts ({last_error})")


def _attempt(
    url: str,
    partial: Path,
    headers: Mapping[str, str],
    policy: DownloadPolicy,
    deadline: float,
    timeout_s: float,
) -> str | None:
    """One GET (following checked redirects) appended to `partial`; None when complete,
    else the retryable reason."""
    offset = partial.stat().st_size if partial.exists() else 0
    request_headers = {**headers, "Accept-Encoding": "identity", "User-Agent": "kaito-tuning"}
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            target = check_url(current, policy.allow)
        except HostLookupError as exc:
            return str(exc)
        except BlockedURLError as exc:
            raise _FatalError(_hop_message(url, current, str(exc))) from None
        connection = _connect(target, _remaining(deadline, timeout_s, url))
        try:
            connection.request("GET", target.path, headers=request_headers)
            response = connection.getresponse()
            status = response.status
            if status in REDIRECT_STATUS:
                location = response.getheader("Location")
                if not location:
                    raise _FatalError(f"{redact_url(url)}: HTTP {status} without a Location")
                following = urljoin(current, location)
                if urlsplit(current).scheme == "https" and urlsplit(following).scheme == "http":
                    raise _FatalError(
                        f"{redact_url(url)}: redirect from https to {redact_url(following)} "
                        "refused (no downgrade to plain http)"
                    )
                if urlsplit(following).hostname != urlsplit(current).hostname:
                    # Credentials were meant for the first host, not wherever it points.
                    request_headers.pop("Authorization", None)
                current = following
                continue
            if status == 416 and offset:
                # The partial file already holds everything the server has.
                return None
            if status in RETRY_STATUS:
                return f"HTTP {status}"
            if status not in (200, 206):
                raise _FatalError(f"{redact_url(url)}: HTTP {status}; not retrying")
            resumed = status == 206 and offset > 0
            start = offset if resumed else 0
            length = response.getheader("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            if total is not None and total > policy.max_bytes:
                raise _FatalError(_too_big(url, total, policy))
            written = start
            with partial.open("ab" if resumed else "wb") as fh:
                # read1 returns what one recv brings, so a server that trickles bytes
                # cannot hold a read past the deadline; the timeout shrinks toward it.
                while chunk := response.read1(CHUNK):
                    if connection.sock is not None:
                        connection.sock.settimeout(_remaining(deadline, timeout_s, url))
                    written += len(chunk)
                    if written > policy.max_bytes:
                        raise _FatalError(_too_big(url, written, policy))
                    fh.write(chunk)
                    if time.monotonic() > deadline:
                        raise _FatalError(
                            f"{redact_url(url)}: not done within the "
                            f"{policy.deadline_s:g} s deadline"
                        )
            if total is not None and written < total:
                return "the connection closed before the whole body arrived"
            return None
        finally:
            connection.close()
    raise _FatalError(f"{redact_url(url)}: more than {MAX_REDIRECTS} redirects")


def _hop_message(url: str, current: str, reason: str) -> str:
    if current == url:
        return reason
    return f"{redact_url(url)}: redirected; {reason}"


def _too_big(url: str, size: int, policy: DownloadPolicy) -> str:
    return (
        f"{redact_url(url)}: {size} bytes or more, over the {policy.max_bytes} byte download "
        f"limit ({MAX_BYTES_ENV})"
    )


def _remaining(deadline: float, timeout_s: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _FatalError(f"{redact_url(url)}: the download deadline passed")
    return min(timeout_s, left)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to checked addresses only, whatever the host name would resolve to now."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.addresses = target.addresses

    def _open(self) -> socket.socket:
        last: OSError | None = None
        for address in self.addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect((address, self.port))
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError("no address to connect to")

    def connect(self) -> None:
        self.sock = self._open()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target, timeout)
        self.default_port = 443
        self.tls = ssl.create_default_context()

    def connect(self) -> None:
        # The certificate is checked against the URL's host name, not the address.
        self.sock = self.tls.wrap_socket(self._open(), server_hostname=self.host)


def _connect(target: Target, timeout: float) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPSConnection(target, timeout)
    return _PinnedHTTPConnection(target, timeout)


def _finish(url: str, partial: Path, target: Path, expected: str | None) -> FetchedInput:
    actual = _digest_of(partial)
    if expected is not None and actual != expected:
        partial.unlink(missing_ok=True)
        raise InputError(f"{redact_url(url)}: checksum mismatch: expected {expected}, got {actual}")
    size = partial.stat().st_size
    os.replace(partial, target)
    return FetchedInput(redact_url(url), target, actual, size)


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
