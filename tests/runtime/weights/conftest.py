"""Weights tests share one registry and one push of the small real model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kaito.runtime.oci.weights import (
    WeightsPackage,
    WeightsPushResult,
    package_weights,
    push_weights,
)
from tests.support.registry import LocalRegistry, oci_registry, oci_registry_auth

__all__ = ["oci_registry", "oci_registry_auth"]

os.environ.setdefault("OMP_NUM_THREADS", "1")
SMOL_REF = ("models/smollm2-135m-instruct", "0.1.0")


def fake_model(directory: Path, *, seed: str = "x", shard_bytes: int = 3 << 20) -> Path:
    """A model-shaped directory: two weight shards, config, tokenizer; distinct per `seed`."""
    directory.mkdir(parents=True, exist_ok=True)
    block = (seed.encode() * 1024)[:1024]
    for index in (1, 2):
        name = f"model-0000{index}-of-00002.safetensors"
        (directory / name).write_bytes(block * (shard_bytes // 1024) + str(index).encode())
    (directory / "config.json").write_text(f'{{"model_type": "llama", "seed": "{seed}"}}')
    (directory / "tokenizer.json").write_text('{"version": "1.0"}')
    return directory


@pytest.fixture(scope="session")
def smol_package() -> WeightsPackage:
    from kaito.runtime.small_model import small_model_path

    return package_weights(small_model_path(), model_name="smollm2-135m-instruct", revision="r1")


@pytest.fixture(scope="session")
def smol_pushed(oci_registry: LocalRegistry, smol_package: WeightsPackage) -> WeightsPushResult:
    return push_weights(smol_package, oci_registry.ref(*SMOL_REF))


@pytest.fixture(scope="session")
def cache_package(tmp_path_factory: pytest.TempPathFactory) -> WeightsPackage:
    """A model-shaped 6 MiB package for the cache-integrity tests: they corrupt blobs and pull
    again, which needs blobs, not a model that runs (pulling the small model twice took 5 s a
    test here)."""
    directory = fake_model(tmp_path_factory.mktemp("cache-model"), seed="cache")
    return package_weights(directory, model_name="fake-cache", revision="r1")


@pytest.fixture(scope="session")
def cache_pushed(oci_registry: LocalRegistry, cache_package: WeightsPackage) -> WeightsPushResult:
    return push_weights(cache_package, oci_registry.ref("models/fake-cache", "1"))
