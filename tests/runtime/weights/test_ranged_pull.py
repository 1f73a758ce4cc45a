"""Blobs larger than a chunk arrive as parallel ranged GETs; each range resumes on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaito.runtime.oci.blobs import sha256_file
from kaito.runtime.oci.registry import RegistryError
from kaito.runtime.oci.weights import (
    BlobCache,
    WeightsPackage,
    package_weights,
    pull_weights,
    push_weights,
)
from tests.runtime.weights.conftest import fake_model
from tests.runtime.weights.proxy import start_proxy
from tests.support.registry import LocalRegistry

CHUNK = 1 << 20  # the fake model's shards are 3 MiB + 1 byte: four ranges each
REPOSITORY = "models/ranged"


def _pushed(registry: LocalRegistry, tmp_path: Path, seed: str) -> WeightsPackage:
    package = package_weights(fake_model(tmp_path / "model", seed=seed))
    push_weights(package, registry.ref(REPOSITORY, seed))
    return package


def _same_files(pulled: Path, package: WeightsPackage) -> None:
    for item in package.files:
        assert sha256_file(pulled / item.name) == item.digest, item.name


def _interrupted(
    registry: LocalRegistry, package: WeightsPackage, tmp_path: Path, seed: str
) -> tuple[Path, int]:
    """Pull through a link that drops half way; returns the cache and the total size."""
    cache = tmp_path / "cache"
    total = sum(f.size for f in package.files)
    with (
        start_proxy(registry.host, cut_after=total // 2) as flaky,
        pytest.raises(RegistryError),
    ):
        pull_weights(
            flaky.ref(REPOSITORY, seed),
            tmp_path / "weights",
            cache_dir=cache,
            chunk_size=CHUNK,
            attempts=1,
        )
    assert flaky.stats.cut
    return cache, total


def test_a_blob_larger_than_a_chunk_arrives_as_one_ranged_get_per_chunk(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    package = _pushed(oci_registry, tmp_path, "ranges")
    with start_proxy(oci_registry.host) as proxy:
        pulled = pull_weights(
            proxy.ref(REPOSITORY, "ranges"),
            tmp_path / "weights",
            cache_dir=tmp_path / "cache",
            chunk_size=CHUNK,
        )
    for shard in (f for f in package.files if f.name.endswith(".safetensors")):
        gets = [p for m, p in proxy.stats.requests if m == "GET" and p.endswith(shard.digest)]
        assert len(gets) == 4, shard.name
    assert pulled.downloaded_bytes == sum(f.size for f in package.files)
    _same_files(tmp_path / "weights", package)


def test_an_interrupted_ranged_pull_fetches_only_the_rest_of_each_range(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    package = _pushed(oci_registry, tmp_path, "resume")
    cache, total = _interrupted(oci_registry, package, tmp_path, "resume")
    progress = [json.loads(p.read_text()) for p in BlobCache(cache).partial.glob("*.json")]
    assert any(len(p["done"]) > 1 for p in progress), "several ranges of one blob were under way"
    resumed = pull_weights(
        oci_registry.ref(REPOSITORY, "resume"),
        tmp_path / "weights",
        cache_dir=cache,
        chunk_size=CHUNK,
    )
    # What was recorded is kept; exactly the rest of every range comes again.
    assert resumed.resumed_bytes > 0
    assert resumed.resumed_bytes + resumed.downloaded_bytes == total
    assert resumed.refetched_blobs == 0
    _same_files(tmp_path / "weights", package)
    assert not any(BlobCache(cache).partial.iterdir())


def test_a_corrupted_range_of_a_partial_download_is_caught_and_the_blob_fetched_again(
    oci_registry: LocalRegistry, tmp_path: Path
) -> None:
    package = _pushed(oci_registry, tmp_path, "corrupt")
    cache, _ = _interrupted(oci_registry, package, tmp_path, "corrupt")
    partial = BlobCache(cache).partial
    # Damage a range the progress file says is written: only the digest can tell.
    saved = {p: json.loads(p.read_text()) for p in partial.glob("*.json")}
    path, state = max(saved.items(), key=lambda item: max(item[1]["done"].values(), default=0))
    start, written = max(state["done"].items(), key=lambda item: item[1])
    assert written > 16
    with (partial / path.stem).open("r+b") as fh:
        fh.seek(int(start) + written // 2)
        fh.write(b"\x00garbage\x00")
    digest = "sha256:" + path.stem
    size = next(f.size for f in package.files if f.digest == digest)
    resumed = pull_weights(
        oci_registry.ref(REPOSITORY, "corrupt"),
        tmp_path / "weights",
        cache_dir=cache,
        chunk_size=CHUNK,
    )
    assert resumed.refetched_blobs == 1
    assert resumed.downloaded_bytes >= size, "the damaged blob came again in full"
    _same_files(tmp_path / "weights", package)
    assert sha256_file(BlobCache(cache).path(digest)) == digest
