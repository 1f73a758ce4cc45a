"""LoRA adapters: discovery under the adapter directory, their strengths, base-model checks."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
# Adapter names become model ids and env var names; keep them to a safe alphabet.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class AdapterError(ValueError):
    """An adapter cannot be served on this base model; the message says why.

    The message goes back to the client, so it never quotes what the adapter's files contain
    (a request names the path); `detail` does, for the server log.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter to serve: its model id, its directory and its strength (LoRA scale factor)."""

    name: str
    path: Path
    strength: float = 1.0


def _strength_from_env(name: str, environ: Mapping[str, str]) -> float:
    """Upstream's convention: an env var named exactly like the adapter (default 1.0).

    Only for adapters mounted by the Workspace (their names come from its spec); never for a
    name a request chose. The error names the variable, never its value.
    """
    raw = environ.get(name, "1.0")
    try:
        return float(raw)
    except ValueError as exc:
        raise AdapterError(
            f"adapter {name!r}: the environment variable of that name is not a number"
        ) from exc


def discover(
    adapter_dir: Path | None,
    strengths: Mapping[str, float] | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[AdapterSpec]:
    """Every sub-directory with an `adapter_config.json`, sorted by name for a stable order.

    A strength comes from `strengths` (the server's settings), else upstream's env convention.
    """
    if adapter_dir is None or not adapter_dir.is_dir():
        return []
    env = os.environ if environ is None else environ
    specs = []
    for child in sorted(adapter_dir.iterdir()):
        if child.is_dir() and (child / ADAPTER_CONFIG).is_file():
            strength = (strengths or {}).get(child.name)
            if strength is None:
                strength = _strength_from_env(child.name, env)
            specs.append(AdapterSpec(child.name, child, strength))
    return specs


def normalized_name(name_or_path: str) -> str:
    return name_or_path.rstrip("/").rsplit("/", 1)[-1].lower()


def validate(spec: AdapterSpec, base_model: Any, base_names: Iterable[str]) -> dict[str, Any]:
    """Refuse an adapter that would not fit the base model; return its parsed config.

    Checks the adapter type, the base model it names, that every target module exists, and that
    every LoRA matrix has the declared rank and the shape of the layer it attaches to.
    """
    if not NAME_PATTERN.fullmatch(spec.name):
        raise AdapterError(f"adapter name {spec.name!r} must match {NAME_PATTERN.pattern}")
    config_file = spec.path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise AdapterError(f"adapter {spec.name!r}: {config_file} does not exist")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(
            f"adapter {spec.name!r}: {ADAPTER_CONFIG} is not JSON "
            f"(line {exc.lineno}, column {exc.colno})"
        ) from exc
    except (OSError, ValueError) as exc:
        raise AdapterError(
            f"adapter {spec.name!r}: {ADAPTER_CONFIG} is unreadable ({type(exc).__name__})"
        ) from exc
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {spec.name!r}: {ADAPTER_CONFIG} is not an object")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(
            f"adapter {spec.name!r}: only LoRA adapters are served (peft_type is not LORA)",
            f"peft_type={peft_type!r}",
        )
    names = {normalized_name(n) for n in base_names if n}
    declared = config.get("base_model_name_or_path")
    if declared and normalized_name(str(declared)) not in names:
        raise AdapterError(
            f"adapter {spec.name!r} was trained for another base model "
            f"(its base_model_name_or_path), but this server serves {sorted(names)}",
            f"base_model_name_or_path={declared!r}",
        )
    modules = dict(base_model.named_modules())
    _check_targets(spec.name, config.get("target_modules"), modules)
    _check_shapes(spec, config, modules)
    return config


def _check_targets(name: str, targets: Any, modules: dict[str, Any]) -> None:
    if targets is None:
        return
    if isinstance(targets, str):
        if targets == "all-linear":
            return
        if not any(re.fullmatch(targets, module) for module in modules):
            raise AdapterError(
                f"adapter {name!r}: its target_modules pattern matches no base layer",
                f"target_modules={targets!r}",
            )
        return
    suffixes = {module.rsplit(".", 1)[-1] for module in modules}
    missing = sorted(str(t) for t in targets if str(t) not in suffixes and str(t) not in modules)
    if missing:
        raise AdapterError(
            f"adapter {name!r}: {len(missing)} of its target modules do not exist in the base "
            "model",
            f"missing target_modules={missing}",
        )


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    safetensors_file = path / "adapter_model.safetensors"
    if safetensors_file.is_file():
        from safetensors import safe_open

        with safe_open(str(safetensors_file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    bin_file = path / "adapter_model.bin"
    if bin_file.is_file():
        import torch

        state = torch.load(bin_file, map_location="cpu", weights_only=True)
        return {key: tuple(value.shape) for key, value in state.items()}
    raise AdapterError(f"adapter at {path}: no adapter_model.safetensors or adapter_model.bin")


def _check_shapes(spec: AdapterSpec, config: dict[str, Any], modules: dict[str, Any]) -> None:
    rank = int(config.get("r", 8))
    rank_pattern = config.get("rank_pattern") or {}
    for key, shape in _tensor_shapes(spec.path).items():
        match = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if match is None or len(shape) != 2:
            continue
        module_name, which = match.group(1), match.group(2)
        module = modules.get(module_name)
        if module is None:
            raise AdapterError(
                f"adapter {spec.name!r}: a LoRA tensor targets a layer the base model lacks",
                f"tensor {key!r}",
            )
        expected_rank = rank
        for pattern, value in rank_pattern.items():
            if re.search(pattern, module_name):
                expected_rank = int(value)
        weight = getattr(module, "weight", None)
        base_shape = tuple(weight.shape) if weight is not None else None
        if which == "A":
            found_rank, base_dim, label = shape[0], shape[1], "input"
            expected_dim = base_shape[1] if base_shape else base_dim
        else:
            found_rank, base_dim, label = shape[1], shape[0], "output"
            expected_dim = base_shape[0] if base_shape else base_dim
        if found_rank != expected_rank:
            raise AdapterError(
                f"adapter {spec.name!r}: the LoRA {which} matrix of {module_name} has rank "
                f"{found_rank}, config declares r={expected_rank}"
            )
        if base_dim != expected_dim:
            raise AdapterError(
                f"adapter {spec.name!r}: the LoRA {which} matrix of {module_name} has {label} "
                f"size {base_dim}, the base layer has {expected_dim}"
            )


def apply_strength(model: Any, name: str, strength: float) -> None:
    """Scale one adapter's LoRA delta; upstream's per-adapter strength, applied per adapter here."""
    for module in model.modules():
        set_scale = getattr(module, "set_scale", None)
        if set_scale is not None and name in getattr(module, "scaling", {}):
            set_scale(name, strength)
