"""Tuning tests share one small training run and a local registry; torch runs single-threaded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.tuning.builders import mixed_dataset, tiny_config
from tests.support.registry import oci_registry, oci_registry_auth

__all__ = ["oci_registry", "oci_registry_auth"]

# On a shared 2-core machine two intra-op threads contend badly (a step gets 5x slower);
# one thread per process is the fastest setting here, and subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _single_thread_torch() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from kaito.runtime.small_model import small_model_path

    return small_model_path()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Path]:
    """One LoRA run on data in all four formats, evaluated at the start and at the end."""
    from kaito.runtime.tuning.train import run_tuning

    root = tmp_path_factory.mktemp("trained")
    data = mixed_dataset(root / "data")
    config = tiny_config(
        max_steps=8, eval_strategy="steps", eval_steps=100, eval_on_start=True, save_steps=4
    )
    run_tuning(config, data, root / "out", model_path=str(model_dir), console=False)
    yield root / "out"
