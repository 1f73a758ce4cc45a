"""Troubleshooting lists every condition reason the code can write; install docs name the chart."""

from __future__ import annotations

import re

import pytest

from tests.unit.deploy.chart import REPO

SOURCES = sorted(
    str(path.relative_to(REPO / "src" / "kaito"))
    for layer in ("manifests", "reconcile", "operator")
    for path in (REPO / "src" / "kaito" / layer).glob("*.py")
)
TROUBLESHOOTING = (REPO / "docs" / "troubleshooting.md").read_text()
CONDITION_TYPES = {
    "ResourceReady",
    "NodeClaimReady",
    "NodesReady",
    "InferenceReady",
    "JobStarted",
    "WorkspaceSucceeded",
    "WorkspaceDeleting",
}


def reasons_in_code() -> set[str]:
    found: set[str] = set()
    for relative in SOURCES:
        text = (REPO / "src" / "kaito" / relative).read_text()
        found |= set(re.findall(r'(?:SpecError|PodProblem)\(\s*"([A-Za-z]+)"', text))
        found |= set(re.findall(r'Cond\.of\([^,]+,[^,]+,\s*"([A-Za-z]+)"', text))
        found |= set(re.findall(r'Outcome\(\s*"(?:permanent|temporary)",\s*"([A-Za-z]+)"', text))
        found |= set(re.findall(r'Event\(\s*"(?:Normal|Warning)",\s*"([A-Za-z]+)"', text))
        if relative.endswith("conditions.py"):
            found |= set(re.findall(r'^[A-Z_]+ = "([A-Za-z]+)"$', text, flags=re.MULTILINE))
    return found


def test_the_scan_finds_reasons_from_every_layer() -> None:
    found = reasons_in_code()
    assert {"PresetNotFound", "ContainerCrashLoopBackOff", "ConfigMapNotFound"} <= found
    assert {"workspaceResourceStatusSuccess", "ApiRetry", "NodeClaimCreationFailed"} <= found
    assert "InvalidWorkspaceSpec" in found


@pytest.mark.parametrize("reason", sorted(reasons_in_code()))
def test_troubleshooting_explains_the_reason(reason: str) -> None:
    assert f"`{reason}`" in TROUBLESHOOTING


def test_install_docs_cover_install_upgrade_and_uninstall() -> None:
    text = (REPO / "docs" / "install.md").read_text()
    for command in (
        "helm install kaito charts/kaito",
        "helm upgrade kaito",
        "helm uninstall kaito",
    ):
        assert command in text
