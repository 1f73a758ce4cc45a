"""The helm flags `kaito dev cluster up --real-node` prints render the settings they promise."""

from __future__ import annotations

import json
import shlex
import subprocess

import yaml

from kaito.cli.dev import workload_flags
from kaito.devcluster.realnode import TOLERATION
from tests.unit.deploy.chart import CHART, KUBE_VERSION, operator_env, require_helm


def test_the_printed_flags_give_the_operator_the_real_node_workload_settings() -> None:
    registry = "10.245.0.1:5001"
    flags = [arg for flag in workload_flags(registry) for arg in shlex.split(flag)]
    helm = [str(require_helm()), "template", "kaito", str(CHART), f"--kube-version={KUBE_VERSION}"]
    result = subprocess.run(
        [*helm, *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    env = operator_env([doc for doc in yaml.safe_load_all(result.stdout) if doc])
    assert json.loads(env["KAITO_WORKLOAD_TOLERATIONS"]) == [TOLERATION]
    assert env["KAITO_PRESET_REGISTRY"] == registry
    assert env["KAITO_PLAIN_HTTP_REGISTRIES"] == registry
