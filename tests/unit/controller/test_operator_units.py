"""Operator pieces that need no cluster: settings, error tiers, the kwok node builder."""

from __future__ import annotations

import httpx
import httpx2
import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from kaito.manifests.errors import SpecError, WaitError
from kaito.operator.errors import classify
from kaito.operator.settings import Settings, SettingsError
from kaito.provisioners.kwok import claim_status, node_for_claim
from kaito.reconcile.planner import plan
from kaito.reconcile.types import Observed
from tests.unit.controller.builders import NOW, OPTIONS, legacy_tuning, multi_gpu_inference, one


def api_error(code: int) -> ApiError:
    return ApiError(status=Status(code=code, message=f"status {code}"))


def test_settings_default_to_nodeclaims_on_azure() -> None:
    settings = Settings.from_env({})
    assert settings.node_provisioner == "azure-gpu-provisioner"
    assert settings.cluster_options().uses_nodeclaims


def test_settings_read_kaito_variables_with_types() -> None:
    settings = Settings.from_env(
        {
            "KAITO_NODE_PROVISIONER": "byo",
            "KAITO_FEATURE_VLLM": "false",
            "KAITO_MAX_CONCURRENT_RECONCILES": "3",
            "KAITO_RESYNC_SECONDS": "1.5",
        }
    )
    assert settings.node_provisioner == "byo"
    assert not settings.cluster_options().uses_nodeclaims
    assert settings.feature_vllm is False
    assert settings.max_concurrent_reconciles == 3
    assert settings.resync_seconds == 1.5


@pytest.mark.parametrize(
    "env",
    [
        {"KAITO_NODE_PROVISIONER": "magic"},
        {"KAITO_FEATURE_VLLM": "maybe"},
        {"KAITO_WEBHOOK_PORT": "https"},
        {"KAITO_CLOUD_PROVIDER": "gcp"},
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(env))):
        Settings.from_env(env)


def test_every_setting_is_documented() -> None:
    assert all(doc for _, _, doc in Settings.describe())


def test_spec_errors_are_permanent_with_their_reason() -> None:
    outcome = classify(SpecError("PresetNotFound", "no such preset"))
    assert (outcome.tier, outcome.reason) == ("permanent", "PresetNotFound")


def test_waits_and_conflicts_are_temporary_with_a_delay() -> None:
    assert classify(WaitError("nodes", delay=2.0)).delay == 2.0
    conflict = classify(api_error(409))
    assert conflict.tier == "temporary" and conflict.delay > 0
    assert classify(api_error(503)).tier == "temporary"
    assert classify(httpx.ConnectError("refused")).tier == "temporary"
    assert classify(httpx2.ReadError("reset")).tier == "temporary"


def test_other_errors_go_to_the_framework_backoff() -> None:
    assert classify(RuntimeError("bug")).tier == "unexpected"
    assert classify(api_error(403)).tier == "unexpected"


def test_the_simulated_node_for_the_legacy_claim_is_a_v100_with_the_claims_labels() -> None:
    claim = one(plan(legacy_tuning(), Observed(), OPTIONS, now=NOW), "NodeClaim")
    node = node_for_claim(claim)
    labels = node["metadata"]["labels"]
    assert node["metadata"]["name"] == claim["metadata"]["name"]
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert labels["node.kubernetes.io/instance-type"] == "Standard_NC6s_v3"
    assert labels["app"] == "tuning-phi-3"
    assert labels["kaito.sh/workspace"] == "workspace-tuning-phi-3"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-V100"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "1"
    assert node["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]


def test_a_simulated_multi_gpu_node_has_every_gpu_of_its_sku() -> None:
    claim = one_of(plan(multi_gpu_inference(), Observed(), OPTIONS, now=NOW))
    assert node_for_claim(claim)["status"]["capacity"]["nvidia.com/gpu"] == "2"


def one_of(result: object) -> dict[str, object]:
    return next(o for o in result.apply if o["kind"] == "NodeClaim")  # type: ignore[attr-defined]


def test_a_claim_is_ready_only_once_its_node_is_ready() -> None:
    claim = one(plan(legacy_tuning(), Observed(), OPTIONS, now=NOW), "NodeClaim")
    launching = claim_status(claim, node_ready=False)
    ready = claim_status(claim, node_ready=True)
    status_of = {c["type"]: c["status"] for c in launching["conditions"]}
    assert status_of == {
        "Launched": "True",
        "Registered": "False",
        "Initialized": "False",
        "Ready": "False",
    }
    assert all(c["status"] == "True" for c in ready["conditions"])
    assert ready["nodeName"] == claim["metadata"]["name"]
    assert ready["providerID"].startswith("kwok://")


def test_a_requested_failure_reports_launched_false_with_the_reason() -> None:
    claim = one(plan(legacy_tuning(), Observed(), OPTIONS, now=NOW), "NodeClaim")
    failed = claim_status(claim, node_ready=False, failure="InsufficientCapacity: no V100 quota")
    launched = failed["conditions"][0]
    assert (launched["status"], launched["reason"], launched["message"]) == (
        "False",
        "InsufficientCapacity",
        "no V100 quota",
    )


def test_kaito_operator_settings_lists_every_variable() -> None:
    from typer.testing import CliRunner

    from kaito.cli.main import app

    result = CliRunner().invoke(app, ["operator", "settings"])
    assert result.exit_code == 0
    for variable, _, _ in Settings.describe():
        assert variable in result.output


def test_kaito_operator_run_refuses_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from kaito.cli.main import app

    monkeypatch.setenv("KAITO_NODE_PROVISIONER", "magic")
    result = CliRunner().invoke(app, ["operator", "run"])
    assert result.exit_code == 2
    assert "KAITO_NODE_PROVISIONER" in result.output
