"""The autoscaler objects for an InferenceSet: they target its scale subresource, read the
inference servers' queue gauges, and refuse bounds the autoscaler would refuse."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from kaito.api.inferenceset import parse_inferenceset
from kaito.cli.main import app
from kaito.manifests.autoscaling import (
    WAITING_METRIC,
    AutoscalePolicy,
    horizontal_pod_autoscaler,
    scaled_object,
)
from kaito.runtime.inference.metrics import ServerMetrics
from tests.unit.controller.test_inferenceset_planner import make_set

ISET = parse_inferenceset(make_set("chat").obj())
PROMETHEUS = "http://prometheus.monitoring:9090"


def test_the_scaled_object_targets_the_sets_scale_subresource_on_the_queue() -> None:
    obj = scaled_object(ISET, AutoscalePolicy(max_replicas=5, target=3), prometheus_url=PROMETHEUS)
    spec = obj["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "InferenceSet",
        "name": "chat",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 5)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["threshold"] == "3"
    assert trigger["metadata"]["query"] == (
        f'sum({WAITING_METRIC}{{namespace="default",kaito_sh_inferenceset="chat"}})'
    )


def test_the_metric_names_are_the_ones_the_inference_server_exports() -> None:
    exported = ServerMetrics().render().decode()
    assert "kaito_num_requests_waiting" in exported
    assert "kaito_num_requests_running" in exported


def test_keda_may_scale_to_zero_and_the_hpa_may_not() -> None:
    to_zero = AutoscalePolicy(min_replicas=0)
    obj = scaled_object(ISET, to_zero, metrics_api_url="http://queue-exporter/chat")
    assert obj["spec"]["minReplicaCount"] == 0
    assert obj["spec"]["triggers"][0]["type"] == "metrics-api"
    with pytest.raises(ValueError, match="cannot scale to zero"):
        horizontal_pod_autoscaler(ISET, to_zero)


def test_the_hpa_averages_the_gauge_over_the_sets_pods() -> None:
    hpa = horizontal_pod_autoscaler(ISET, AutoscalePolicy(min_replicas=1, max_replicas=1))
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == WAITING_METRIC
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "InferenceSet"


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (AutoscalePolicy(min_replicas=3, max_replicas=2), "at least min"),
        (AutoscalePolicy(min_replicas=0, max_replicas=0), "at least 1"),
        (AutoscalePolicy(target=0), "above 0"),
    ],
)
def test_bounds_the_autoscaler_would_refuse_are_refused_here(
    policy: AutoscalePolicy, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        scaled_object(ISET, policy, prometheus_url=PROMETHEUS)


def test_keda_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        scaled_object(ISET, AutoscalePolicy())


def test_the_cli_prints_an_applicable_object() -> None:
    runner = CliRunner()
    text = yaml.safe_dump(make_set("chat").obj())
    result = runner.invoke(app, ["autoscale", "-f", "-", "--with", "hpa", "--max", "3"], input=text)
    assert result.exit_code == 0, result.output
    hpa = yaml.safe_load(result.output)
    assert hpa["kind"] == "HorizontalPodAutoscaler" and hpa["spec"]["maxReplicas"] == 3
    refused = runner.invoke(app, ["autoscale", "-f", "-", "--with", "keda"], input=text)
    assert refused.exit_code == 2


def test_the_cpu_hpa_holds_a_percent_of_the_pods_request_with_the_chosen_scale_down() -> None:
    policy = AutoscalePolicy(max_replicas=2, metric="cpu", target=50, cooldown_s=30)
    hpa = horizontal_pod_autoscaler(ISET, policy)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50},
            },
        }
    ]
    assert hpa["spec"]["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 30}
    assert hpa["spec"]["behavior"]["scaleUp"] == {"stabilizationWindowSeconds": 0}


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (AutoscalePolicy(metric="cpu", target=50.5), "whole percent"),
        (AutoscalePolicy(cooldown_s=3601), "0 to 3600"),
        (AutoscalePolicy(cooldown_s=-1), "0 to 3600"),
    ],
)
def test_cpu_targets_and_scale_down_windows_the_hpa_would_refuse_are_refused(
    policy: AutoscalePolicy, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        horizontal_pod_autoscaler(ISET, policy)
    assert horizontal_pod_autoscaler(ISET, AutoscalePolicy(cooldown_s=3600))  # the limit itself


def test_keda_refuses_the_cpu_metric() -> None:
    with pytest.raises(ValueError, match="--with hpa"):
        scaled_object(ISET, AutoscalePolicy(metric="cpu", target=80), prometheus_url=PROMETHEUS)


def test_the_cli_gives_a_cpu_hpa_with_its_default_target_and_the_users_scale_down() -> None:
    runner = CliRunner()
    text = yaml.safe_dump(make_set("chat").obj())
    args = ["autoscale", "-f", "-", "--with", "hpa", "--metric", "cpu"]
    result = runner.invoke(app, [*args, "--scale-down-window", "45"], input=text)
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load(result.output)["spec"]
    assert spec["metrics"][0]["resource"]["target"]["averageUtilization"] == 80
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 45
    default = yaml.safe_load(runner.invoke(app, args, input=text).output)["spec"]
    assert default["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    unknown = runner.invoke(app, ["autoscale", "-f", "-", "--metric", "memory"], input=text)
    assert unknown.exit_code == 2 and "waiting, running or cpu" in unknown.output
