"""The weights artifact format: one titled raw layer per model file, a config, annotations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kaito.runtime.oci.blobs import sha256_file
from kaito.runtime.oci.registry import ANNOTATION_MODEL, MEDIA_MANIFEST

# Upstream's per-file media type for weights artifacts (`oras pull` writes each layer to its
# title, so plain oras can read these images too).
MEDIA_WEIGHTS = "application/vnd.kaito.llm.v1"
MEDIA_FILE = "application/vnd.kaito.llm.v1.file"
MEDIA_WEIGHTS_CONFIG = "application/vnd.kaito.model.config.v1+json"
ARTIFACT_TYPE = "application/vnd.kaito.model.v1"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_REVISION = "sh.kaito.model.revision"
ANNOTATION_FILES = "sh.kaito.model.files"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
# Upstream's packager leaves out the original checkpoints and Apple-only weights.
EXCLUDED_DIRS = ("original", "metal")
DEFAULT_WORKERS = 4


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
        return digest_bytes(self.manifest)

    def manifest_json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.manifest)
        return document


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex of a `sha256:<64 hex>` digest; WeightsError for anything else (a file name)."""
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise WeightsError(f"unsupported digest {digest!r}")
    return value


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
            "digest": digest_bytes(config),
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
    return WeightsPackage(files, config, digest_bytes(config), body)


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
        digest = str(layer["digest"])
        digest_hex(digest)
        layers.append((title, digest, int(layer["size"])))
    if not layers:
        raise WeightsError("the image has no layers")
    return layers
