"""The GPU runtime's dependency set (extras inference, tuning and gpu) resolves for the CUDA
image's platform, and that image's CUDA base matches the CUDA the resolved wheels are built for.

The resolver (uv, in a subprocess: the network guard covers this process only) asks PyPI; its
output is kept under $KAITO_HOME/cache/gpu-resolve by a hash of the inputs, so a warm run is
instant and a change to pyproject.toml's extras resolves again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.unit.deploy.chart import REPO

PLATFORM = "x86_64-manylinux_2_28"
# 3.11: the project's floor; 3.12: the Python of the CUDA image's Ubuntu 24.04 base.
PYTHONS = ("3.11", "3.12")
EXTRAS = ("inference", "tuning", "gpu")


def kaito_home() -> Path:
    return Path(os.environ.get("KAITO_HOME") or Path.home() / ".cache" / "kaito")


def uv_binary() -> Path:
    """tools/setup.sh's uv, else one on PATH; skip (fail in CI) without one."""
    candidates = [kaito_home() / "bootstrap" / "bin" / "uv", shutil.which("uv")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    message = "uv not found; run tools/setup.sh"
    if os.environ.get("KAITO_REQUIRE_CLUSTER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def extras() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {name: list(project["optional-dependencies"][name]) for name in EXTRAS}


def pins(lock: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, flags=re.MULTILINE))


def resolve(python: str) -> dict[str, str]:
    """`uv pip compile` of the extras for linux x86_64 and `python`, cached by input hash."""
    uv = uv_binary()
    version = subprocess.run(
        [str(uv), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    requirements = sorted({req for reqs in extras().values() for req in reqs})
    key = hashlib.sha256(repr((requirements, python, PLATFORM, version)).encode()).hexdigest()
    cache = kaito_home() / "cache" / "gpu-resolve" / f"{key[:24]}.txt"
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        source = cache.with_suffix(".in")
        source.write_text("\n".join(requirements) + "\n")
        result = subprocess.run(
            [
                str(uv), "pip", "compile", "--quiet", "--no-header", "--no-annotate",
                "--python-platform", PLATFORM, "--python-version", python,
                str(source), "-o", str(cache.with_suffix(".tmp")),
            ],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"the GPU set does not resolve:\n{result.stderr[-4000:]}"
        cache.with_suffix(".tmp").replace(cache)
    return pins(cache.read_text())


def test_the_gpu_extra_pins_vllm_and_bitsandbytes() -> None:
    gpu = extras()["gpu"]
    assert any(re.fullmatch(r"vllm==\d+\.\d+\.\d+", req) for req in gpu), gpu
    assert any(req.startswith("bitsandbytes") for req in gpu), gpu
    # The dev venv must not pull vLLM in (tools/setup.sh installs the other extras only).
    assert "gpu" not in (REPO / "tools" / "setup.sh").read_text().split("-e ")[1].split("\n")[0]


@pytest.mark.parametrize("python", PYTHONS)
def test_the_gpu_runtime_set_resolves_for_linux_x86_64(python: str) -> None:
    resolved = resolve(python)
    vllm = next(req for req in extras()["gpu"] if req.startswith("vllm=="))
    assert resolved["vllm"] == vllm.split("==")[1]
    assert "bitsandbytes" in resolved
    assert resolved["transformers"].split(".")[0] == "5"
    for package in ("torch", "peft", "trl", "accelerate"):
        assert package in resolved, package


def test_the_cuda_base_matches_the_cuda_of_the_resolved_torch() -> None:
    resolved = resolve(PYTHONS[-1])
    cuda = ".".join(resolved["nvidia-cuda-runtime"].split(".")[:2])
    recipe = (REPO / "docker" / "runtime.Dockerfile").read_text()
    bases = set(re.findall(r"BASE=nvidia/cuda:(\d+\.\d+)\.\d+-", recipe))
    assert bases == {cuda}, f"runtime.Dockerfile's CUDA recipe names {bases}, the wheels {cuda}"
    install = (REPO / "docs" / "install.md").read_text()
    assert f"nvidia/cuda:{cuda}." in install
    assert re.search(r"driver[^\n]*>= ?\d{3}", install), "docs/install.md names no driver"
