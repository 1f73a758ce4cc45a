"""Delete the CUDA libraries a CPU image never loads (docker/runtime.Dockerfile, CUDA_LIBS=loaded).

PyPI has only CUDA builds of torch for Linux x86_64, and they do not import without their
nvidia-* wheels (~3 GB). Most of those bytes are loaded lazily, on a GPU only (cuDNN's engines,
cuSOLVER, cuRAND, headers). This keeps every shared library that importing torch and running a
CPU matmul maps into the process, deletes the rest of the nvidia/ tree's libraries, headers and
static archives, and checks that the same probe still passes. Run with the image's Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

PROBE = """
import torch
x = torch.ones(64, 64)
assert float((x @ x).sum()) == 64.0 ** 3
torch.cuda.is_available()
import torch.distributed, torch.utils.data
print("\\n".join(sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line})))
"""


def loaded_libraries() -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"torch probe failed:\n{result.stderr[-3000:]}")
    return {os.path.realpath(path) for path in result.stdout.split()}


def main() -> None:
    nvidia = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    if not nvidia.is_dir():
        print("no nvidia/ libraries: nothing to prune")
        return
    keep = loaded_libraries()
    freed = 0
    for path in sorted(nvidia.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        shared = ".so" in path.name
        dead = (
            path.suffix in {".a", ".h", ".hpp", ".cuh"}
            or "include" in path.relative_to(nvidia).parts
        )
        if (shared and os.path.realpath(path) not in keep) or dead:
            freed += path.stat().st_size
            path.unlink()
    for path in nvidia.rglob("*"):
        if path.is_symlink() and not path.exists():
            path.unlink()
    loaded_libraries()  # the same probe passes without what was removed
    print(f"pruned {freed / 1e9:.2f} GB of CUDA libraries torch does not load on CPU")


if __name__ == "__main__":
    main()
