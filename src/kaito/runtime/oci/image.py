"""OCI images that carry files under `/data`: build one gzip layer, push, pull and extract."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaito.runtime.oci.blobs import BlobClient, fetch_manifest
from kaito.runtime.oci.registry import (
    GZIP_LAYERS,
    MEDIA_CONFIG,
    MEDIA_LAYER_GZIP,
    MEDIA_MANIFEST,
    PLAIN_LAYERS,
    ImageReference,
    RegistryError,
    retry,
)

DATA_ROOT = "data"
WHITEOUT = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
# Adapters and datasets: far above any real one, far below a disk a layer could fill.
DEFAULT_MAX_EXTRACT_BYTES = 64 << 30


class UnsafeLayerError(RegistryError):
    """A layer holds an entry that would land outside the extraction root, or too much."""


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
            blobs = BlobClient(ref, docker_config=docker_config, insecure=insecure)
            blobs.upload(layer_path, layer_digest, layer_size)
            blobs.upload(config_path, config_digest, len(config_bytes))
            # PUT our exact bytes (oras re-serializes the dict), so the digest we report is
            # the digest the registry stores.
            blobs.put_manifest(reference.target, manifest_bytes, MEDIA_MANIFEST)

        retry(f"push {reference}", attempts, backoff_s, push_once, log)
    digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    return PushResult(str(reference), digest, layer_size)


@dataclass(frozen=True)
class PullResult:
    reference: str
    digest: str
    files: list[Path]
    annotations: dict[str, str]


def pull_image_data(
    ref: str,
    dest: Path,
    *,
    docker_config: Path | None = None,
    insecure: bool | None = None,
    attempts: int = 3,
    backoff_s: float = 1.0,
    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
) -> PullResult:
    """Extract every layer's `/data` into `dest` (upstream's puller); digests are verified.

    Files land in a temporary directory next to `dest` first, so an interrupted pull never
    leaves a partial adapter or dataset that looks complete. Layers are checked entry by
    entry before anything is written or deleted (`extract_layer`), and all layers together
    may unpack to at most `max_bytes`.
    """
    reference = ImageReference.parse(ref)
    manifest, digest = retry(
        f"pull {reference}",
        attempts,
        backoff_s,
        lambda: fetch_manifest(ref, docker_config=docker_config, insecure=insecure),
    )
    blobs = BlobClient(ref, docker_config=docker_config, insecure=insecure)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-pull-", dir=dest.parent))
    try:
        rootfs = staging / "rootfs"
        rootfs.mkdir()
        for layer in manifest.get("layers", []):
            blob = staging / "blob"
            hasher = hashlib.sha256()
            declared, layer_digest = int(layer.get("size", 0)), str(layer["digest"])
            with blob.open("wb") as fh:

                def sink(
                    chunk: bytes,
                    fh: Any = fh,
                    hasher: Any = hasher,
                    declared: int = declared,
                    layer_digest: str = layer_digest,
                ) -> None:
                    # A registry serving more than the manifest declares is cut off here.
                    if fh.tell() + len(chunk) > declared:
                        raise RegistryError(f"blob {layer_digest}: more than {declared} bytes")
                    hasher.update(chunk)
                    fh.write(chunk)

                blobs.download(layer["digest"], sink)
            if "sha256:" + hasher.hexdigest() != layer["digest"]:
                raise RegistryError(f"blob {layer['digest']}: digest mismatch")
            media = layer.get("mediaType", MEDIA_LAYER_GZIP)
            if media not in GZIP_LAYERS | PLAIN_LAYERS:
                raise RegistryError(f"layer {layer['digest']}: unsupported media type {media}")
            max_bytes -= extract_layer(blob, rootfs, max_bytes=max_bytes)
            blob.unlink()
        data = rootfs / DATA_ROOT
        if not data.is_dir():
            raise RegistryError(f"{reference}: the image has no /{DATA_ROOT} directory")
        dest.mkdir(parents=True, exist_ok=True)
        files = []
        # Regular files only: a link that pointed inside rootfs could point out of `dest`
        # once moved (`data/x -> ../y`), so links never leave the staging directory.
        for path in sorted(p for p in data.rglob("*") if p.is_file() and not p.is_symlink()):
            target = dest / path.relative_to(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            files.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PullResult(str(reference), digest, files, dict(manifest.get("annotations", {})))


def _inside(name: str) -> str | None:
    """`name` normalized relative to the root, or None when any step climbs above it."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts) or "."


def _checked_members(tar: tarfile.TarFile, max_bytes: int) -> list[tarfile.TarInfo]:
    """Every member, after checking that each stays inside the root and the sum fits."""
    members = tar.getmembers()
    total = 0
    for member in members:
        if _inside(member.name) is None:
            raise UnsafeLayerError(f"layer entry {member.name!r} would land outside the root")
        base = posixpath.basename(member.name.rstrip("/"))
        named = base[len(WHITEOUT) :]
        if base.startswith(WHITEOUT) and base != OPAQUE_WHITEOUT and named in ("", ".", ".."):
            raise UnsafeLayerError(f"whiteout {member.name!r} names no entry")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            # Devices and FIFOs have no place in weights, adapters or datasets.
            raise UnsafeLayerError(f"layer entry {member.name!r} is a special file")
        if member.issym() or member.islnk():
            target = member.linkname
            base = posixpath.dirname(member.name) if member.issym() else ""
            if target.startswith("/") or _inside(posixpath.join(base, target)) is None:
                raise UnsafeLayerError(
                    f"layer entry {member.name!r} links to {target!r}, outside the root"
                )
        total += max(member.size, 0)
        if total > max_bytes:
            raise UnsafeLayerError(f"the layer unpacks to more than the {max_bytes} byte limit")
    return members


def _apply_whiteout(rootfs: Path, name: str) -> None:
    root = rootfs.resolve()
    parent_name, base = posixpath.split(name)
    parent = (rootfs / parent_name).resolve()
    if parent != root and root not in parent.parents:
        # A directory of a lower layer may be a link; never follow one out of the root.
        raise UnsafeLayerError(f"whiteout {name!r} resolves outside the root")
    if not parent.is_dir():
        return
    if base == OPAQUE_WHITEOUT:
        for child in list(parent.iterdir()):
            _remove(child)
        return
    _remove(parent / base[len(WHITEOUT) :])


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def extract_layer(blob: Path, rootfs: Path, *, max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES) -> int:
    """Apply one layer (gzip or plain tar) to `rootfs`; returns the bytes it unpacked.

    Every entry is checked first: a name or link that would leave `rootfs` (whiteouts
    included, e.g. `data/../../x/.wh.y`), or more than `max_bytes` in all, refuses the whole
    layer before anything is deleted or written. Whiteouts then remove what lower layers
    left (OCI: a whiteout never hides an entry of its own layer), and the rest is extracted
    with tarfile's `data` filter (no absolute paths, devices or links out of the tree).
    """
    with tarfile.open(blob, mode="r:*") as tar:
        members = _checked_members(tar, max_bytes)
        whiteouts = {id(m): m for m in members if posixpath.basename(m.name).startswith(WHITEOUT)}
        for member in whiteouts.values():
            name = _inside(member.name)
            assert name is not None  # checked above
            _apply_whiteout(rootfs, name)
        written = 0
        for member in members:
            if id(member) in whiteouts:
                continue
            _extract(tar, member, rootfs)
            written += max(member.size, 0)
    return written


# Extraction filters came with Python 3.11.4; Debian bookworm's python3 (3.11.2, the dev image's
# base) lacks them, and the adapter puller failed there with "unexpected keyword 'filter'".
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, rootfs: Path) -> None:
    """Extract one checked member with the `data` filter, or its rules applied by hand."""
    if HAS_DATA_FILTER:
        tar.extract(member, rootfs, filter="data")
        return
    safe = copy.copy(member)
    safe.name = _inside(member.name) or "."  # no absolute names (checked: none climb out)
    if member.islnk():
        safe.linkname = _inside(member.linkname) or "."
    # As the data filter: no set-id or sticky bits, no group/other write, owner readable.
    if member.isfile() or member.isdir():
        safe.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
    safe.uid = safe.gid = os.getuid() if hasattr(os, "getuid") else 0
    safe.uname = safe.gname = ""
    tar.extract(safe, rootfs, set_attrs=not member.issym())
