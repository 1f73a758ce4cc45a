"""Tuning tests share the session's LoRA run and a local registry; torch runs single-threaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
def trained(kiwi_adapter: Path) -> Path:
    """The session's one LoRA run (tests/runtime/conftest.py), shared with the llama.cpp tests."""
    return kiwi_adapter
