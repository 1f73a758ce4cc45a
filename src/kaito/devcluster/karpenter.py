"""The Karpenter NodeClaim CRD, read from the sigs.k8s.io/karpenter Go module at test time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import yaml

from kaito.devcluster.binaries import bin_dir
from kaito.devcluster.client import JSON, ApiClient

# Must match the default of hack/build-control-plane.sh, which pre-downloads the module.
DEFAULT_KARPENTER_VERSION = "v1.15.0"
NODECLAIM_CRD_IN_MODULE = "pkg/apis/crds/karpenter.sh_nodeclaims.yaml"
NODECLAIM_CRD_NAME = "nodeclaims.karpenter.sh"


def karpenter_version() -> str:
    return os.environ.get("KARPENTER_VERSION") or DEFAULT_KARPENTER_VERSION


def _crd_from_module(version: str) -> str:
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("the Karpenter CRD needs `go` to read sigs.k8s.io/karpenter")
    # A version already in GOMODCACHE resolves without the network. The zip is read rather than
    # the extracted directory because Go refuses to extract a module that asks for a newer Go.
    result = subprocess.run(
        [go, "mod", "download", "-json", f"sigs.k8s.io/karpenter@{version}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path.home(),
    )
    info: dict[str, Any] = json.loads(result.stdout or "{}")
    if "Zip" not in info:
        raise FileNotFoundError(
            f"cannot download sigs.k8s.io/karpenter@{version}: {info.get('Error') or result.stderr}"
        )
    with zipfile.ZipFile(info["Zip"]) as archive:
        member = f"{info['Path']}@{info['Version']}/{NODECLAIM_CRD_IN_MODULE}"
        return archive.read(member).decode()


def nodeclaim_crd_text(version: str | None = None) -> str:
    """The NodeClaim CRD YAML: the build script's copy, else read from the Go module."""
    version = version or karpenter_version()
    directory = bin_dir()
    copied = directory / "karpenter.sh_nodeclaims.yaml"
    recorded = directory / "karpenter.version"
    if copied.is_file() and recorded.is_file() and recorded.read_text().strip() == version:
        return copied.read_text()
    return _crd_from_module(version)


def nodeclaim_crd(version: str | None = None) -> JSON:
    """The NodeClaim CustomResourceDefinition as a dict."""
    loaded: JSON = yaml.safe_load(nodeclaim_crd_text(version))
    return loaded


def crd_established(crd: JSON) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def install_crd(client: ApiClient, crd: JSON, *, timeout_s: float = 60.0) -> JSON:
    """Apply a CRD and wait until the apiserver serves it."""
    client.apply(crd)
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
    return client.wait_for(
        lambda: found if crd_established(found := client.get(path)) else None,
        timeout_s=timeout_s,
        what=f"CRD {crd['metadata']['name']} to be established",
    )


def install_nodeclaim_crd(client: ApiClient, version: str | None = None) -> JSON:
    """Install `nodeclaims.karpenter.sh` (karpenter.sh/v1) and wait until it is served."""
    return install_crd(client, nodeclaim_crd(version))
