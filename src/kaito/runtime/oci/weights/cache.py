"""The node-local weights cache: content-addressed blobs, trusted only once their digest matched.

A blob is trusted on a node only after its bytes hashed to its digest there. The stamp that
lets a later pull skip the re-hash records size, inode, mtime and ctime: user space can set
mtime back (`touch -d`, `os.utime`) but not ctime, so a blob written in place after its check
is hashed again before it is used, however its times were dressed up. Workloads see the blobs
only through the weights volume, which the manifests mount read-only (manifests/weights.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from kaito.runtime.oci.blobs import sha256_file
from kaito.runtime.oci.weights.format import digest_hex

FALLBACK_DIR = ".kaito-cache"


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
        return self.blobs / digest_hex(digest)

    def partial_path(self, digest: str) -> Path:
        """Where a download of `digest` accumulates (its progress file beside it)."""
        return self.partial / digest_hex(digest)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        # One pull at a time per node: a second pod waits, then finds every blob cached.
        with (self.root / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _stamp(path: Path) -> str:
        stat = path.stat()
        return f"{stat.st_size} {stat.st_ino} {stat.st_mtime_ns} {stat.st_ctime_ns}"

    def _stamp_path(self, digest: str) -> Path:
        return self.verified / digest_hex(digest)

    def trusted(self, digest: str) -> bool:
        """Whether the blob is unchanged since its digest last matched (no read of its bytes)."""
        path = self.path(digest)
        with contextlib.suppress(OSError):
            return self._stamp_path(digest).read_text() == self._stamp(path)
        return False

    def valid(self, digest: str, size: int, *, verify: bool) -> bool:
        """Whether the cached blob is intact; a corrupt one is deleted so it is fetched again.

        A blob is re-hashed when `verify` is set, when it has no stamp (never checked here),
        or when anything about its inode changed since its stamp (a write moves ctime).
        """
        path = self.path(digest)
        if not path.is_file():
            return False
        if path.stat().st_size == size and not verify and self.trusted(digest):
            return True
        if path.stat().st_size == size and sha256_file(path) == digest:
            self.seal(digest)
            return True
        path.unlink()
        self._stamp_path(digest).unlink(missing_ok=True)
        return False

    def seal(self, digest: str) -> None:
        """Record the blob's current inode state as verified; only right after a check.

        Hard-linking a blob into a model directory moves its ctime, so a pull seals the blobs
        it just checked again after placing them (still under the node lock).
        """
        self._stamp_path(digest).write_text(self._stamp(self.path(digest)))

    def commit(self, digest: str, staged: Path) -> Path:
        """Move a verified download into the store, read-only (it is hard-linked into models)."""
        path = self.path(digest)
        staged.chmod(0o444)
        os.replace(staged, path)
        self.seal(digest)
        return path


def open_cache(root: Path, dest: Path, log: Callable[[str], None]) -> BlobCache:
    """The cache at `root`, or one inside `dest` when `root` cannot be written.

    A node cache this user cannot write (a hostPath the node did not prepare) must not fail
    the pull: keep the cache beside the weights and lose only the reuse across pods.
    """
    try:
        cache = BlobCache(root)
        if all(os.access(d, os.W_OK) for d in (cache.root, cache.blobs, cache.partial)):
            return cache
    except OSError:
        pass
    fallback = dest / FALLBACK_DIR
    log(f"cache {root} is not writable; caching in {fallback}")
    return BlobCache(fallback)


def place(blob: Path, target: Path, *, link: bool) -> Path:
    """Put a cached blob at `target`: a hard link (a copy across file systems or on request)."""
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
