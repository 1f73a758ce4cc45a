"""Render the Helm chart with the helm binary that tools/setup.d/30-helm.sh builds."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "kaito"
JSON = dict[str, Any]
KUBE_VERSION = "1.34.4"  # the test control plane's (hack/build-control-plane.sh)


def tool_binary(name: str) -> Path | None:
    """$KAITO_HOME/bin/<name> (where tools/setup.d puts it), else <name> on PATH, else None."""
    home = Path(os.environ.get("KAITO_HOME", Path.home() / ".cache" / "kaito"))
    installed = home / "bin" / name
    if installed.is_file() and os.access(installed, os.X_OK):
        return installed
    found = shutil.which(name)
    return Path(found) if found else None


def require_tool(name: str, setup_hook: str) -> Path:
    """The binary, or skip; under KAITO_REQUIRE_CLUSTER=1 (CI) fail, since a skipped check
    must not pass, as in the cluster tier."""
    binary = tool_binary(name)
    if binary is None:
        message = f"{name} not installed; run tools/setup.d/{setup_hook}"
        if os.environ.get("KAITO_REQUIRE_CLUSTER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def require_helm() -> Path:
    return require_tool("helm", "30-helm.sh")


def set_flags(values: Mapping[str, Any]) -> list[str]:
    """`--set-json key=<json>` flags for dotted keys, so types survive."""
    import json

    return [
        arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")
    ]


def render(values: Mapping[str, Any] | None = None, namespace: str = "kaito-system") -> list[JSON]:
    """`helm template` of the chart (templates only, not the CRD) as a list of objects."""
    helm = require_helm()
    result = subprocess.run(
        [
            str(helm),
            "template",
            "kaito",
            str(CHART),
            f"--namespace={namespace}",
            # A helm built by `go install` assumes Kubernetes 1.20 without a cluster to ask.
            f"--kube-version={KUBE_VERSION}",
            *set_flags(values or {}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[JSON], kind: str, name: str | None = None) -> JSON:
    matches = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"{len(matches)} {kind} named {name}"
    return matches[0]


def operator_env(objects: list[JSON]) -> dict[str, str]:
    """The operator container's environment in a rendered chart."""
    container = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: str(item.get("value", "")) for item in container["env"]}
