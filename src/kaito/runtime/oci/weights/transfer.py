"""Moving weights: push a package (unchanged blobs skipped), pull in parallel ranges via the cache.

A pull fetches missing blobs as byte ranges into the cache's partial/ directory (resumable
after an interruption), hashes them while they arrive, and commits only what matches its
digest; then it places every file from the cache into the model directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from kaito.runtime.oci.blobs import RANGE_BUFFER, BlobClient, fetch_manifest
from kaito.runtime.oci.registry import MEDIA_MANIFEST, ImageReference, RegistryError, retry
from kaito.runtime.oci.weights.cache import BlobCache, default_cache_dir, open_cache, place
from kaito.runtime.oci.weights.format import DEFAULT_WORKERS, WeightsPackage, weight_layers

DEFAULT_CHUNK = 32 << 20
PROGRESS_EVERY = 8 << 20
HASH_STEP = 1 << 20


@dataclass(frozen=True)
class WeightsPushResult:
    reference: str
    digest: str
    uploaded_blobs: int
    uploaded_bytes: int
    skipped_blobs: int
    manifest_uploaded: bool


def push_weights(
    package: WeightsPackage,
    ref: str,
    *,
    docker_config: Path | None = None,
    insecure: bool | None = None,
    attempts: int = 4,
    backoff_s: float = 1.0,
    log: Callable[[str], None] = lambda _message: None,
) -> WeightsPushResult:
    """Push a package; blobs and a manifest the registry already holds are not sent again."""
    reference = ImageReference.parse(ref)
    client = BlobClient(ref, docker_config=docker_config, insecure=insecure)
    uploaded: dict[str, int] = {}
    skipped: set[str] = set()
    sources: dict[str, tuple[Path | bytes, int]] = {
        package.config_digest: (package.config, len(package.config))
    }
    for item in package.files:
        sources.setdefault(item.digest, (item.path, item.size))
    manifest_sent = False

    def push_once() -> None:
        nonlocal manifest_sent
        for digest, (source, size) in sources.items():
            if digest in uploaded or digest in skipped:
                continue
            if client.upload(source, digest, size):
                uploaded[digest] = size
                log(f"uploaded {digest} ({size} bytes)")
            else:
                skipped.add(digest)
        if client.manifest_digest(reference.target) != package.digest:
            client.put_manifest(reference.target, package.manifest, MEDIA_MANIFEST)
            manifest_sent = True

    retry(f"push {reference}", attempts, backoff_s, push_once, log)
    return WeightsPushResult(
        str(reference),
        package.digest,
        len(uploaded),
        sum(uploaded.values()),
        len(skipped),
        manifest_sent,
    )


@dataclass
class WeightsPullResult:
    reference: str
    digest: str
    files: list[Path]
    annotations: dict[str, str]
    downloaded_bytes: int = 0
    resumed_bytes: int = 0
    cached_blobs: int = 0
    fetched_blobs: int = 0
    refetched_blobs: int = 0  # blobs that failed their digest (cached or served) and came again
    seconds: float = 0.0


def pull_weights(
    ref: str,
    dest: Path,
    *,
    cache_dir: Path | None = None,
    docker_config: Path | None = None,
    insecure: bool | None = None,
    workers: int = DEFAULT_WORKERS,
    chunk_size: int = DEFAULT_CHUNK,
    attempts: int = 3,
    backoff_s: float = 0.5,
    verify: bool = False,
    link: bool = True,
    log: Callable[[str], None] = lambda _message: None,
) -> WeightsPullResult:
    """Pull a weights image into `dest` through the node cache.

    Missing blobs download as parallel byte ranges into the cache's partial/ directory and
    resume from there after an interruption; every download is checked against its digest
    (a mismatch is fetched once more, then fails); a cached blob is used only once its digest
    matched on this node and its inode is unchanged since (`BlobCache.valid`). Files are
    hard-linked from the cache into `dest` (copied across file systems), so a second pull on
    the node downloads nothing.
    """
    started = time.monotonic()
    manifest, digest = retry(
        f"pull {ref}",
        attempts,
        backoff_s,
        lambda: fetch_manifest(ref, docker_config=docker_config, insecure=insecure),
        log,
    )
    layers = weight_layers(manifest)
    cache = open_cache(cache_dir or default_cache_dir(), dest, log)
    client = BlobClient(ref, docker_config=docker_config, insecure=insecure)
    result = WeightsPullResult(str(ImageReference.parse(ref)), digest, [], {})
    result.annotations = dict(manifest.get("annotations", {}))
    sizes = {layer_digest: size for _, layer_digest, size in layers}
    with cache.lock(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        present = {d for d in sizes if cache.path(d).is_file()}
        checks = dict(
            zip(
                sizes,
                pool.map(lambda d: cache.valid(d, sizes[d], verify=verify), list(sizes)),
                strict=True,
            )
        )
        corrupt = {d for d in present if not checks[d]}
        missing = [d for d in sizes if not checks[d]]
        result.cached_blobs = len(sizes) - len(missing)
        result.refetched_blobs += len(corrupt)
        for round_ in range(2):
            if not missing:
                break
            bad = _download(
                client, cache, missing, sizes, pool, chunk_size, attempts, backoff_s, result, log
            )
            result.fetched_blobs += len(missing) - len(bad)
            if bad and round_ == 0:
                log(f"digest mismatch for {', '.join(bad)}; fetching again")
                result.refetched_blobs += len(bad)
            missing = bad
        if missing:
            raise RegistryError(f"{ref}: digest mismatch for {', '.join(missing)} after refetch")
        dest.mkdir(parents=True, exist_ok=True)
        for name, layer_digest, _ in layers:
            result.files.append(place(cache.path(layer_digest), dest / name, link=link))
        # Each hard link moved its blob's ctime; every blob was checked above, under this lock.
        for layer_digest in sizes:
            cache.seal(layer_digest)
    result.seconds = time.monotonic() - started
    return result


def _download(
    client: BlobClient,
    cache: BlobCache,
    digests: list[str],
    sizes: Mapping[str, int],
    pool: ThreadPoolExecutor,
    chunk_size: int,
    attempts: int,
    backoff_s: float,
    result: WeightsPullResult,
    log: Callable[[str], None],
) -> list[str]:
    """Fetch `digests` into the cache; returns those whose bytes failed the digest check."""
    partials = [PartialBlob(cache, d, sizes[d], chunk_size) for d in digests]
    result.resumed_bytes += sum(p.resumed for p in partials)
    counter = threading.Lock()

    buffers = threading.local()

    def fetch(partial: PartialBlob, start: int, end: int) -> None:
        # One reusable buffer per worker thread: the socket reads into it, the file and the
        # hasher take it from there.
        buffer = getattr(buffers, "view", None)
        if buffer is None:
            buffer = buffers.view = memoryview(bytearray(RANGE_BUFFER))

        def sink(offset: int, data: memoryview) -> None:
            partial.write(start, offset, data)
            with counter:
                result.downloaded_bytes += len(data)

        for attempt in range(1, attempts + 1):
            offset = start + partial.done.get(start, 0)
            if offset >= end:
                return
            try:
                client.read_range(partial.digest, offset, end, buffer, sink)
                if start + partial.done.get(start, 0) < end:
                    have = start + partial.done.get(start, 0)
                    raise RegistryError(f"blob {partial.digest}: short read at {have}")
                partial.hash_ready()
                return
            except Exception as exc:
                if attempt == attempts:
                    raise
                log(f"blob {partial.digest} bytes {offset}-{end}: {exc}; resuming")
                time.sleep(backoff_s * 2 ** (attempt - 1))

    try:
        tasks = [(p, s, e) for p in partials for s, e in p.ranges()]
        # Biggest ranges first so small files fill the gaps instead of trailing at the end.
        tasks.sort(key=lambda t: t[1] - t[2])
        futures = [pool.submit(fetch, *task) for task in tasks]
        future_names = {f: t[0].digest for f, t in zip(futures, tasks, strict=True)}
        # Let every range finish or fail before the files close under them.
        wait(futures)
        for future in futures:
            error = future.exception()
            if error is not None:
                raise RegistryError(f"download {future_names[future]}: {error}") from error
        matches = dict(zip(partials, pool.map(PartialBlob.digest_matches, partials), strict=True))
    finally:
        for partial in partials:
            partial.close()
    bad = []
    for partial in partials:
        if matches[partial]:
            cache.commit(partial.digest, partial.data)
            partial.progress_path.unlink(missing_ok=True)
        else:
            partial.discard()
            bad.append(partial.digest)
    return bad


class PartialBlob:
    """One blob being downloaded: a sparse file written at offsets, plus per-chunk progress."""

    def __init__(self, cache: BlobCache, digest: str, size: int, chunk: int) -> None:
        self.digest, self.size, self.chunk = digest, size, chunk
        self.data = cache.partial_path(digest)
        self.progress_path = self.data.with_name(f"{self.data.name}.json")
        self.done: dict[int, int] = {}
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(self.progress_path.read_text())
            if saved["size"] == size and saved["chunk"] == chunk and self.data.is_file():
                self.done = {int(k): int(v) for k, v in saved["done"].items()}
        if not self.done:
            self.reset()
        self.resumed = sum(self.done.values())
        self.fd = os.open(self.data, os.O_RDWR)
        self._lock = threading.Lock()
        self._unsaved = 0
        # The digest is computed while the download runs: the range at the hash frontier is
        # hashed from the download buffer as it arrives, and a prefix that other ranges
        # completed is read back from the page cache, so little is left at the end.
        self._hasher = hashlib.sha256()
        self._hashed = 0
        self._hash_lock = threading.Lock()
        self._hash_buffer: bytearray | None = None

    def reset(self) -> None:
        self.done = {}
        with self.data.open("wb") as fh:
            fh.truncate(self.size)
        self.progress_path.unlink(missing_ok=True)

    def ranges(self) -> list[tuple[int, int]]:
        """(chunk start, chunk end) of every chunk not yet complete."""
        return [
            (start, min(start + self.chunk, self.size))
            for start in range(0, self.size, self.chunk)
            if start + self.done.get(start, 0) < min(start + self.chunk, self.size)
        ]

    def _frontier(self) -> int:
        """Where the first incomplete chunk resumes: every byte before it is on disk."""
        with self._lock:
            left = self.ranges()
            return left[0][0] + self.done.get(left[0][0], 0) if left else self.size

    def hash_ready(self, *, wait: bool = False) -> None:
        """Hash the complete prefix; without `wait`, skip when another thread is at it."""
        if not self._hash_lock.acquire(blocking=wait):
            return
        try:
            self._catch_up()
        finally:
            self._hash_lock.release()

    def _catch_up(self) -> None:
        limit = self._frontier()
        if self._hashed >= limit:
            return
        if self._hash_buffer is None:
            self._hash_buffer = bytearray(HASH_STEP)
        view = memoryview(self._hash_buffer)
        while self._hashed < limit:
            count = os.preadv(self.fd, [view[: min(HASH_STEP, limit - self._hashed)]], self._hashed)
            if not count:
                break
            self._hasher.update(view[:count])
            self._hashed += count

    def digest_matches(self) -> bool:
        self.hash_ready(wait=True)
        return self._hashed == self.size and "sha256:" + self._hasher.hexdigest() == self.digest

    def write(self, chunk_start: int, offset: int, data: memoryview) -> None:
        """Write `data` at `offset` (inside the chunk at `chunk_start`) and record it."""
        written = 0
        while written < len(data):
            written += os.pwrite(self.fd, data[written:], offset + written)
        with self._lock:
            self.done[chunk_start] = offset + len(data) - chunk_start
            self._unsaved += len(data)
            if self._unsaved >= PROGRESS_EVERY:
                self._save()
        # At the frontier the bytes are hashed from the buffer still in hand, not read back;
        # a thread that finds the hasher busy or behind leaves it to the catch-up.
        if self._hashed == offset and self._hash_lock.acquire(blocking=False):
            try:
                if self._hashed == offset:
                    self._hasher.update(data)
                    self._hashed += len(data)
            finally:
                self._hash_lock.release()

    def _save(self) -> None:
        # Progress is written after the bytes it describes, so a crash can only under-report.
        self._unsaved = 0
        temporary = self.progress_path.with_suffix(".tmp")
        payload = {"size": self.size, "chunk": self.chunk, "done": self.done}
        temporary.write_text(json.dumps(payload))
        os.replace(temporary, self.progress_path)

    def close(self) -> None:
        with self._lock:
            self._save()
        os.close(self.fd)

    def discard(self) -> None:
        self.data.unlink(missing_ok=True)
        self.progress_path.unlink(missing_ok=True)
