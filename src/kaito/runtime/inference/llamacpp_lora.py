"""PEFT LoRA adapters as llama.cpp GGUF LoRA files: converted once, cached by adapter digest."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kaito.runtime.inference.adapters import ADAPTER_CONFIG, AdapterError, AdapterSpec

ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Bump when the written layout changes, so stale cache entries are not reused.
CONVERSION_VERSION = "1"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$"
)


@dataclass(frozen=True)
class BaseInfo:
    """What a LoRA conversion needs from the base GGUF: architecture, heads, tensor shapes."""

    arch: str
    block_count: int
    head_count: int
    head_count_kv: int
    shapes: dict[str, tuple[int, ...]]  # GGUF tensor name -> ggml ne (innermost first)

    @classmethod
    def read(cls, gguf_file: Path) -> BaseInfo:
        import gguf

        reader = gguf.GGUFReader(str(gguf_file))

        def field(name: str, default: Any = None) -> Any:
            found = reader.get_field(name)
            return default if found is None else found.contents()

        arch = str(field(gguf.Keys.General.ARCHITECTURE, "llama"))
        heads = int(field(f"{arch}.attention.head_count", 0) or 0)
        return cls(
            arch=arch,
            block_count=int(field(f"{arch}.block_count", 0) or 0),
            head_count=heads,
            head_count_kv=int(field(f"{arch}.attention.head_count_kv", heads) or heads),
            shapes={t.name: tuple(int(d) for d in t.shape) for t in reader.tensors},
        )


def adapter_digest(path: Path) -> str:
    """Identifies an adapter's content: its config and weights files, hashed."""
    digest = hashlib.sha256(CONVERSION_VERSION.encode())
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        file = path / name
        if not file.is_file():
            raise AdapterError(f"adapter at {path}: {name} is missing")
        digest.update(name.encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]


def _read_config(spec: AdapterSpec) -> dict[str, Any]:
    try:
        config = json.loads((spec.path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"adapter {spec.name!r}: unreadable {ADAPTER_CONFIG}: {exc}") from exc
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"adapter {spec.name!r}: only LoRA adapters are served")
    if config.get("alpha_pattern"):
        raise AdapterError(f"adapter {spec.name!r}: per-layer alpha_pattern is not supported")
    if config.get("use_dora"):
        raise AdapterError(f"adapter {spec.name!r}: DoRA adapters are not supported")
    return config


def _effective_alpha(config: dict[str, Any]) -> float:
    """llama.cpp scales by alpha / rank; rsLoRA scales by alpha / sqrt(rank)."""
    alpha = float(config.get("lora_alpha", 8))
    if config.get("use_rslora"):
        return alpha * math.sqrt(float(config.get("r", 8)))
    return alpha


def _unpermute_rows(rows: np.ndarray, heads: int) -> np.ndarray:
    """Apply the rotary-half reordering llama.cpp's converter gives q/k rows of llama models."""
    out = rows.shape[0]
    if heads <= 0 or out % (heads * 2):
        raise AdapterError(f"cannot reorder {out} rows over {heads} heads")
    grouped = rows.reshape(heads, 2, out // heads // 2, *rows.shape[1:])
    return np.ascontiguousarray(grouped.swapaxes(1, 2).reshape(rows.shape))


def convert(spec: AdapterSpec, base: BaseInfo, target: Path) -> None:
    """Write `spec` (PEFT safetensors) as a GGUF LoRA for the base model described by `base`."""
    import gguf
    from safetensors.numpy import load_file

    config = _read_config(spec)
    arch_enum = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == base.arch), None)
    if arch_enum is None:
        raise AdapterError(f"adapter {spec.name!r}: unknown base architecture {base.arch!r}")
    names = gguf.get_tensor_name_map(arch_enum, base.block_count)
    try:
        tensors = load_file(str(spec.path / ADAPTER_WEIGHTS))
    except Exception as exc:
        raise AdapterError(f"adapter {spec.name!r}: unreadable weights: {exc}") from exc
    writer = gguf.GGUFWriter(str(target), base.arch)
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, _effective_alpha(config))
    written = 0
    for key in sorted(tensors):
        match = _KEY.match(key)
        if match is None:
            raise AdapterError(f"adapter {spec.name!r}: tensor {key!r} is not a LoRA matrix")
        module, which = match.group("module"), match.group("which")
        gguf_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if gguf_name is None or gguf_name not in base.shapes:
            raise AdapterError(f"adapter {spec.name!r}: layer {module!r} is not in the base model")
        array = tensors[key].astype(np.float32)
        base_ne = base.shapes[gguf_name]  # (in_features, out_features)
        if array.ndim != 2 or len(base_ne) != 2:
            raise AdapterError(f"adapter {spec.name!r}: {key} is not a 2-D LoRA matrix")
        if which == "A" and array.shape[1] != base_ne[0]:
            raise AdapterError(
                f"adapter {spec.name!r}: {key} has input size {array.shape[1]}, "
                f"the base layer {base_ne[0]}"
            )
        if which == "B":
            if array.shape[0] != base_ne[1]:
                raise AdapterError(
                    f"adapter {spec.name!r}: {key} has output size {array.shape[0]}, "
                    f"the base layer {base_ne[1]}"
                )
            if base.arch == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
                heads = base.head_count if "attn_q" in gguf_name else base.head_count_kv
                array = _unpermute_rows(array, heads)
        writer.add_tensor(f"{gguf_name}.lora_{which.lower()}", array)
        written += 1
    if not written:
        raise AdapterError(f"adapter {spec.name!r} has no LoRA matrices")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_lora(spec: AdapterSpec, base_gguf: Path, base: BaseInfo, cache: Path) -> Path:
    """The GGUF LoRA file for `spec`, converting on first use; keyed by adapter and base."""
    base_key = hashlib.sha256(f"{base_gguf.resolve()}:{base_gguf.stat().st_size}".encode())
    target = cache / f"{adapter_digest(spec.path)}-{base_key.hexdigest()[:12]}.gguf"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=".lora-", suffix=".gguf", dir=cache)
    os.close(fd)
    try:
        convert(spec, base, Path(staging))
        os.replace(staging, target)  # atomic: a concurrent reader sees all or nothing
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return target
