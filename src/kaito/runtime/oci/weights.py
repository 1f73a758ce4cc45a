"""Model weights as OCI artifacts: one raw layer per file, a node-local cache, parallel pulls."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kaito.runtime.oci.blobs import RANGE_BUFFER, BlobClient, sha256_file
from kaito.runtime.oci.image import (
    MEDIA_MANIFEST,
    ImageReference,
    RegistryError,
    _retry,
    fetch_manifest,
)

# Upstream's per-file media type for weights artifacts (`oras pull` writes each layer to its
# title, so plain oras can read these images too).
MEDIA_WEIGHTS = "application/vnd.kaito.llm.v1"
MEDIA_FILE = "application/vnd.kaito.llm.v1.file"
MEDIA_WEIGHTS_CONFIG = "application/vnd.kaito.model.config.v1+json"
ARTIFACT_TYPE = "application/vnd.kaito.model.v1"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_MODEL = "sh.kaito.model.name"
ANNOTATION_REVISION = "sh.kaito.model.revision"
ANNOTATION_FILES = "sh.kaito.model.files"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
# Upstream's packager leaves out the original checkpoints and Apple-only weights.
EXCLUDED_DIRS = ("original", "metal")
DEFAULT_CHUNK = 32 << 20
DEFAULT_WORKERS = 4
PROGRESS_EVERY = 8 << 20
HASH_STEP = 1 << 20


class WeightsError(ValueError):
    """A source directory or an image is not usable as model weights."""


@dataclass(frozen=True)
class WeightFile:
    name: str  # relative POSIX path inside the model directory
    path: Path
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class WeightsPackage:
    """A packaged model: its files, config blob and the exact manifest bytes to push."""

    files: tuple[WeightFile, ...]
    config: bytes
    config_digest: str
    manifest: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    def manifest_json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.manifest)
        return document


def _digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def model_files(source: Path) -> list[tuple[str, Path]]:
    """The files to publish from a model directory, sorted by name; hidden files are skipped."""
    if not source.is_dir():
        raise WeightsError(f"{source} is not a directory")
    found = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        parts = relative.parts
        if any(part.startswith(".") for part in parts) or parts[0] in EXCLUDED_DIRS:
            continue
        if path.is_file():
            found.append((relative.as_posix(), path))
    if not found:
        raise WeightsError(f"{source} holds no files")
    if not any(name.endswith(WEIGHT_SUFFIXES) for name, _ in found):
        raise WeightsError(f"{source} holds no weights ({', '.join(WEIGHT_SUFFIXES)})")
    return found


def package_weights(
    source: Path,
    *,
    model_name: str | None = None,
    revision: str | None = None,
    workers: int = DEFAULT_WORKERS,
) -> WeightsPackage:
    """Hash every file of `source` and build a deterministic manifest (same model, same digest)."""
    listed = model_files(source)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        digests = list(pool.map(lambda item: sha256_file(item[1]), listed))
    files = tuple(
        WeightFile(
            name,
            path,
            digest,
            path.stat().st_size,
            MEDIA_WEIGHTS if name.endswith(WEIGHT_SUFFIXES) else MEDIA_FILE,
        )
        for (name, path), digest in zip(listed, digests, strict=True)
    )
    name = model_name or source.resolve().name
    config_doc = {
        "format": "kaito-weights/v1",
        "model": name,
        "revision": revision or "",
        "files": [{"name": f.name, "digest": f.digest, "size": f.size} for f in files],
    }
    config = json.dumps(config_doc, sort_keys=True, separators=(",", ":")).encode()
    annotations = {
        ANNOTATION_MODEL: name,
        ANNOTATION_FILES: json.dumps(
            {f.name: f.digest for f in files}, sort_keys=True, separators=(",", ":")
        ),
    }
    if revision:
        annotations[ANNOTATION_REVISION] = revision
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": MEDIA_WEIGHTS_CONFIG,
            "digest": _digest_bytes(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": f.media_type,
                "digest": f.digest,
                "size": f.size,
                "annotations": {ANNOTATION_TITLE: f.name},
            }
            for f in files
        ],
        "annotations": annotations,
    }
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return WeightsPackage(files, config, _digest_bytes(config), body)


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

    _retry(f"push {reference}", attempts, backoff_s, push_once, log)
    return WeightsPushResult(
        str(reference),
        package.digest,
        len(uploaded),
        sum(uploaded.values()),
        len(skipped),
        manifest_sent,
    )


def default_cache_dir() -> Path:
    """`$KAITO_CACHE_DIR` (else ~/.cache/kaito): blobs live under blobs/sha256/<hex>."""
    from kaito.runtime.small_model import cache_dir

    return cache_dir()


class BlobCache:
    """A node-local content-addressed store: blobs/, partial/ (resumable), verified/ stamps."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.partial = root / "partial" / "sha256"
        self.verified = root / "verified" / "sha256"
        for directory in (self.blobs, self.partial, self.verified):
            directory.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blobs / _hex(digest)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        # One pull at a time per node: a second pod waits, then finds every blob cached.
        with (self.root / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _stamp(self, path: Path) -> str:
        stat = path.stat()
        return f"{stat.st_size} {stat.st_mtime_ns} {stat.st_ino}"

    def valid(self, digest: str, size: int, *, verify: bool) -> bool:
        """Whether the cached blob is intact; a corrupt one is deleted so it is fetched again.

        A blob is re-hashed when `verify` is set or when it changed since its last check
        (size, mtime, inode), so a warm start does not re-read gigabytes it already trusts.
        """
        path, stamp = self.path(digest), self.verified / _hex(digest)
        if not path.is_file():
            return False
        if path.stat().st_size == size and not verify:
            with contextlib.suppress(OSError):
                if stamp.read_text() == self._stamp(path):
                    return True
        if path.stat().st_size == size and sha256_file(path) == digest:
            stamp.write_text(self._stamp(path))
            return True
        path.unlink()
        stamp.unlink(missing_ok=True)
        return False

    def commit(self, digest: str, staged: Path) -> Path:
        """Move a verified download into the store, read-only (it is hard-linked into models)."""
        path = self.path(digest)
        staged.chmod(0o444)
        os.replace(staged, path)
        (self.verified / _hex(digest)).write_text(self._stamp(path))
        return path


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise WeightsError(f"unsupported digest {digest!r}")
    return value


class _Partial:
    """One blob being downloaded: a sparse file written at offsets, plus per-chunk progress."""

    def __init__(self, cache: BlobCache, digest: str, size: int, chunk: int) -> None:
        self.digest, self.size, self.chunk = digest, size, chunk
        self.data = cache.partial / _hex(digest)
        self.progress_path = cache.partial / f"{_hex(digest)}.json"
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


def weight_layers(manifest: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(file name, digest, size) per layer; refuses layers without a safe relative title."""
    layers = []
    for layer in manifest.get("layers", []):
        title = layer.get("annotations", {}).get(ANNOTATION_TITLE)
        if not title:
            raise WeightsError(f"layer {layer.get('digest')} has no {ANNOTATION_TITLE}")
        path = PurePosixPath(title)
        if path.is_absolute() or ".." in path.parts or title.startswith("."):
            raise WeightsError(f"layer title {title!r} is not a safe relative path")
        layers.append((title, str(layer["digest"]), int(layer["size"])))
    if not layers:
        raise WeightsError("the image has no layers")
    return layers


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
    (a mismatch is fetched once more, then fails). Files are hard-linked from the cache into
    `dest` (copied across file systems), so a second pull on the node downloads nothing.
    """
    started = time.monotonic()
    manifest, digest = _retry(
        f"pull {ref}",
        attempts,
        backoff_s,
        lambda: fetch_manifest(ref, docker_config=docker_config, insecure=insecure),
        log,
    )
    layers = weight_layers(manifest)
    cache = _open_cache(cache_dir or default_cache_dir(), dest, log)
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
            result.files.append(_place(cache.path(layer_digest), dest / name, link=link))
    result.seconds = time.monotonic() - started
    return result


def _open_cache(root: Path, dest: Path, log: Callable[[str], None]) -> BlobCache:
    # A node cache this user cannot write (a hostPath the node did not prepare) must not fail
    # the pull: keep the cache beside the weights and lose only the reuse across pods.
    try:
        cache = BlobCache(root)
        if all(os.access(d, os.W_OK) for d in (cache.root, cache.blobs, cache.partial)):
            return cache
    except OSError:
        pass
    fallback = dest / ".kaito-cache"
    log(f"cache {root} is not writable; caching in {fallback}")
    return BlobCache(fallback)


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
    partials = [_Partial(cache, d, sizes[d], chunk_size) for d in digests]
    result.resumed_bytes += sum(p.resumed for p in partials)
    counter = threading.Lock()

    buffers = threading.local()

    def fetch(partial: _Partial, start: int, end: int) -> None:
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
        matches = dict(zip(partials, pool.map(_Partial.digest_matches, partials), strict=True))
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


def _place(blob: Path, target: Path, *, link: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and os.path.samefile(blob, target):
        return target
    temporary = target.parent / f".{target.name}.kaito-pull"
    temporary.unlink(missing_ok=True)
    try:
        if not link:
            raise OSError("copy requested")
        os.link(blob, temporary)
    except OSError:
        shutil.copyfile(blob, temporary)
    os.replace(temporary, target)
    return target
