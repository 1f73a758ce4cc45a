"""Generated chart files and docs match their single sources; the chart renders and lints."""

from __future__ import annotations

import importlib.util
import subprocess
from types import ModuleType
from typing import Any

import pytest
import yaml

from kaito.presets.validation import default_config_maps
from tests.unit.deploy.chart import CHART, find, render, require_helm


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kaito_chart_generate", CHART / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_up_to_date() -> None:
    stale = [
        str(path)
        for path, content in load_generator().generated().items()
        if not path.exists() or path.read_text() != content
    ]
    assert not stale, f"run `python charts/kaito/generate.py`; stale: {stale}"


def test_every_value_is_documented_in_the_configuration_page() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = {key for key, _, _ in load_generator().documented_values(text)}

    def leaves(tree: dict[str, Any], prefix: str = "") -> set[str]:
        # A documented mapping (e.g. `resources`) is one value; others are documented per key.
        found: set[str] = set()
        for key, value in tree.items():
            path = prefix + key
            if isinstance(value, dict) and value and path not in documented:
                found |= leaves(value, path + ".")
            else:
                found.add(path)
        return found

    assert leaves(yaml.safe_load(text)) == documented
    assert "webhook.certManager.enabled" in documented


def test_the_chart_installs_the_packaged_tuning_templates_verbatim() -> None:
    objects = render()
    for name, data in default_config_maps().items():
        config_map = find(objects, "ConfigMap", name)
        assert config_map["metadata"]["namespace"] == "kaito-system"
        assert config_map["data"] == data


def test_the_tuning_templates_can_be_left_out() -> None:
    assert not [o for o in render({"tuningTemplates": False}) if o["kind"] == "ConfigMap"]


def test_helm_lint_is_clean() -> None:
    helm = require_helm()
    result = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def helm_template(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(require_helm()), "template", "kaito", str(CHART), "--kube-version=1.34.4", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_more_than_one_replica_is_refused_without_leader_election() -> None:
    result = helm_template("--set", "replicaCount=2", "--set", "leaderElection.enabled=false")
    assert result.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled=true" in result.stderr


def test_more_than_one_replica_with_the_webhook_needs_a_shared_certificate() -> None:
    result = helm_template("--set", "replicaCount=2")
    assert result.returncode != 0
    assert "webhook.certManager.enabled=true" in result.stderr


@pytest.mark.parametrize(
    "flags",
    [
        ("--set", "webhook.certManager.enabled=true"),
        ("--set", "webhook.enabled=false"),
    ],
)
def test_more_replicas_with_leader_election_roll_without_a_gap(flags: tuple[str, str]) -> None:
    result = helm_template("--set", "replicaCount=3", *flags)
    assert result.returncode == 0, result.stderr
    deployment = next(
        doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "Deployment"
    )
    assert deployment["spec"]["replicas"] == 3
    # Old and new pods overlap safely: the Lease keeps one reconciling.
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
