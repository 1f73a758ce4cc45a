"""GPU instance-type (SKU) tables for Azure, AWS and Arc, with upstream's unknown-SKU fallback."""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

CloudProvider = Literal["azure", "aws", "arc"]
CLOUD_PROVIDERS: tuple[CloudProvider, ...] = ("azure", "aws", "arc")


@dataclass(frozen=True)
class Sku:
    """One instance type. `gpu_memory_gib` is the instance's total GPU memory."""

    name: str
    cloud: str
    gpus: int
    gpu_memory_gib: float
    gpu_model: str
    compute_capability: str | None = None
    nvme: bool = False
    status: str = "current"
    # False for the fallback made up for an unknown instance type.
    known: bool = True

    @property
    def gpu_memory_per_gpu_gib(self) -> float:
        return self.gpu_memory_gib / self.gpus if self.gpus else 0.0

    @property
    def is_legacy(self) -> bool:
        return self.status != "current"


def unknown_sku(name: str) -> Sku:
    """What upstream v0.3.0 assumed for an instance type it had no row for: one GPU.

    Memory is unknown (0), so memory checks are skipped and callers should surface a warning.
    """
    return Sku(
        name=name, cloud="unknown", gpus=1, gpu_memory_gib=0.0, gpu_model="unknown", known=False
    )


class SkuTable:
    """All SKUs of all clouds; lookups are case-insensitive."""

    def __init__(self, skus: list[Sku]) -> None:
        self._skus = skus
        self._index: dict[str, Sku] = {}
        for sku in skus:
            self._index.setdefault(sku.name.lower(), sku)

    def __iter__(self) -> Iterator[Sku]:
        return iter(self._skus)

    def get(self, name: str, cloud: str | None = None) -> Sku | None:
        """The SKU row, or None; with `cloud`, only rows of that cloud match."""
        sku = self._index.get(name.strip().lower())
        if sku is None or (cloud is not None and sku.cloud != cloud):
            return None
        return sku

    def resolve(self, name: str, cloud: str | None = None) -> Sku:
        """The SKU row, or the one-GPU fallback (check `.known`) for an unknown name."""
        return self.get(name, cloud) or unknown_sku(name)

    def names(self, cloud: str | None = None, *, current_only: bool = False) -> list[str]:
        return [
            s.name
            for s in self._skus
            if (cloud is None or s.cloud == cloud) and (not current_only or not s.is_legacy)
        ]


def _rows(cloud: str, entries: list[Mapping[str, Any]]) -> list[Sku]:
    skus = []
    for entry in entries:
        names = entry.get("names") or [entry["name"]]
        for name in names:
            skus.append(
                Sku(
                    name=str(name),
                    cloud=cloud,
                    gpus=int(entry["gpus"]),
                    gpu_memory_gib=float(entry["gpu_memory_gib"]),
                    gpu_model=str(entry["gpu_model"]),
                    compute_capability=entry.get("cc"),
                    nvme=bool(entry.get("nvme", False)),
                    status=str(entry.get("status", "current")),
                )
            )
    return skus


def load_skus(text: str) -> SkuTable:
    """Parse skus.yaml text (cloud -> rows) into a table."""
    data = yaml.safe_load(text)
    skus: list[Sku] = []
    for cloud, entries in (data or {}).items():
        skus.extend(_rows(str(cloud), entries or []))
    return SkuTable(skus)


@functools.cache
def default_skus() -> SkuTable:
    """The SKU table shipped in kaito/presets/data/skus.yaml (read once per process)."""
    text = importlib.resources.files("kaito.presets").joinpath("data/skus.yaml").read_text()
    return load_skus(text)


def get_sku(name: str, cloud: str | None = None) -> Sku | None:
    """Shortcut: look an instance type up in the default table."""
    return default_skus().get(name, cloud)


def is_azure_gpu_family(name: str) -> bool:
    """Upstream admits unknown Azure names starting with Standard_N or Standard_D for inference."""
    lowered = name.lower()
    return lowered.startswith("standard_n") or lowered.startswith("standard_d")
