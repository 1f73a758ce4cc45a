"""Autoscaler objects for an InferenceSet: a KEDA ScaledObject or an HPA on its scale subresource.

The scaling loop is the autoscaler's (KEDA's operator, or the HPA controller), never kaito's:
these builders only describe what to scale (the set's scale subresource), on which signal
(the inference servers' queue, from their /metrics, or the pods' CPU from metrics-server) and
within which bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kaito.api.inferenceset import API_VERSION, KIND, LABEL_INFERENCESET, InferenceSet

JSON = dict[str, Any]
# Gauges every inference server exports on /metrics (kaito.runtime.inference.metrics).
WAITING_METRIC = "kaito_num_requests_waiting"
RUNNING_METRIC = "kaito_num_requests_running"
# `cpu` is the HPA's Resource metric (metrics.k8s.io, served by metrics-server): no adapter and
# no Prometheus, at the price of a coarser signal than the queue.
Metric = Literal["waiting", "running", "cpu"]
METRICS: dict[str, str] = {"waiting": WAITING_METRIC, "running": RUNNING_METRIC}
# What each metric's target means when none is given: waiting/running requests per replica, or
# percent of the pods' CPU request (CPU presets request 250m, so 80 % is 200m busy on average).
DEFAULT_TARGETS: dict[str, float] = {"waiting": 4.0, "running": 4.0, "cpu": 80.0}
# Model loads take minutes: scale down only after this long below target (HPA
# scaleDown.stabilizationWindowSeconds, KEDA cooldownPeriod).
DEFAULT_SCALE_DOWN_S = 300
# The HPA's own upper bound for a stabilization window (one hour).
MAX_SCALE_DOWN_S = 3600


@dataclass(frozen=True)
class AutoscalePolicy:
    """Bounds and signal. `target` is the per-replica average of the metric to hold
    (e.g. 4 waiting requests per replica, or for `cpu` a percent of the pods' CPU request);
    `min_replicas` 0 lets KEDA scale to zero. `cooldown_s` is how long the signal must stay
    below target before replicas are removed."""

    min_replicas: int = 1
    max_replicas: int = 4
    metric: Metric = "waiting"
    target: float = 4.0
    # KEDA only: what makes a set at zero wake up (any request waiting or running).
    activation: float = 0.0
    cooldown_s: int = DEFAULT_SCALE_DOWN_S
    polling_s: int = 15

    def check(self, *, hpa: bool) -> None:
        if self.min_replicas < (1 if hpa else 0):
            raise ValueError(
                "the HPA cannot scale to zero (min replicas >= 1); use KEDA for scale-to-zero"
            )
        if self.max_replicas < max(self.min_replicas, 1):
            raise ValueError("max replicas must be at least min replicas and at least 1")
        if self.target <= 0:
            raise ValueError("the target must be above 0")
        if self.metric == "cpu" and not float(self.target).is_integer():
            raise ValueError("a cpu target is a whole percent of the pods' CPU request")
        if not 0 <= self.cooldown_s <= MAX_SCALE_DOWN_S:
            raise ValueError(f"the scale-down window is 0 to {MAX_SCALE_DOWN_S} seconds")


def _target(iset: InferenceSet) -> JSON:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": iset.name}


def _labels(iset: InferenceSet) -> JSON:
    return {LABEL_INFERENCESET: iset.name, "app.kubernetes.io/managed-by": "kaito"}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def prometheus_query(iset: InferenceSet, metric: Metric) -> str:
    """Sum of the metric over the set's pods: KEDA divides by the target per replica."""
    return (
        f'sum({METRICS[metric]}{{namespace="{iset.namespace}",'
        f'{LABEL_INFERENCESET.replace(".", "_").replace("/", "_")}="{iset.name}"}})'
    )


def scaled_object(
    iset: InferenceSet,
    policy: AutoscalePolicy,
    *,
    prometheus_url: str | None = None,
    metrics_api_url: str | None = None,
) -> JSON:
    """A KEDA ScaledObject scaling the set through its scale subresource, on a Prometheus
    query over the servers' metrics (upstream KAITO's choice) or a metrics-api endpoint
    returning JSON with `value` (any exporter that sums the queue)."""
    policy.check(hpa=False)
    if policy.metric == "cpu":
        raise ValueError("the cpu metric is for the HPA (--with hpa); KEDA here reads the queue")
    if (prometheus_url is None) == (metrics_api_url is None):
        raise ValueError("give exactly one of a Prometheus URL or a metrics-api URL")
    if prometheus_url is not None:
        trigger: JSON = {
            "type": "prometheus",
            "metadata": {
                "serverAddress": prometheus_url,
                "query": prometheus_query(iset, policy.metric),
                "threshold": _number(policy.target),
                "activationThreshold": _number(policy.activation),
            },
        }
    else:
        trigger = {
            "type": "metrics-api",
            "metadata": {
                "url": metrics_api_url,
                "valueLocation": "value",
                "targetValue": _number(policy.target),
                "activationTargetValue": _number(policy.activation),
            },
        }
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": iset.name, "namespace": iset.namespace, "labels": _labels(iset)},
        "spec": {
            "scaleTargetRef": _target(iset),
            "minReplicaCount": policy.min_replicas,
            "maxReplicaCount": policy.max_replicas,
            "pollingInterval": policy.polling_s,
            "cooldownPeriod": policy.cooldown_s,
            "triggers": [trigger],
        },
    }


def _hpa_metric(policy: AutoscalePolicy) -> JSON:
    if policy.metric == "cpu":
        return {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": int(policy.target)},
            },
        }
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": METRICS[policy.metric]},
            "target": {"type": "AverageValue", "averageValue": _number(policy.target)},
        },
    }


def horizontal_pod_autoscaler(iset: InferenceSet, policy: AutoscalePolicy) -> JSON:
    """An autoscaling/v2 HPA on the set's scale subresource, averaging over the set's pods
    (the scale subresource's selector) either a Pods metric, the servers' gauge through a
    custom-metrics adapter (e.g. prometheus-adapter), or the Resource metric `cpu` as a
    percent of the pods' request, which metrics-server serves."""
    policy.check(hpa=True)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": iset.name, "namespace": iset.namespace, "labels": _labels(iset)},
        "spec": {
            "scaleTargetRef": _target(iset),
            "minReplicas": policy.min_replicas,
            "maxReplicas": policy.max_replicas,
            "metrics": [_hpa_metric(policy)],
            # Model loads take minutes: scale down after the window, up at once.
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": policy.cooldown_s},
                "scaleUp": {"stabilizationWindowSeconds": 0},
            },
        },
    }
