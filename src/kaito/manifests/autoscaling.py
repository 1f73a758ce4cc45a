"""Autoscaler objects for an InferenceSet: a KEDA ScaledObject or an HPA on its scale subresource.

The scaling loop is the autoscaler's (KEDA's operator, or the HPA controller), never kaito's:
these builders only describe what to scale (the set's scale subresource), on which signal
(the inference servers' queue, from their /metrics) and within which bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kaito.api.inferenceset import API_VERSION, KIND, LABEL_INFERENCESET, InferenceSet

JSON = dict[str, Any]
# Gauges every inference server exports on /metrics (kaito.runtime.inference.metrics).
WAITING_METRIC = "kaito_num_requests_waiting"
RUNNING_METRIC = "kaito_num_requests_running"
Metric = Literal["waiting", "running"]
METRICS: dict[str, str] = {"waiting": WAITING_METRIC, "running": RUNNING_METRIC}


@dataclass(frozen=True)
class AutoscalePolicy:
    """Bounds and signal. `target` is the per-replica average of the metric to hold
    (e.g. 4 waiting requests per replica); `min_replicas` 0 lets KEDA scale to zero."""

    min_replicas: int = 1
    max_replicas: int = 4
    metric: Metric = "waiting"
    target: float = 4.0
    # KEDA only: what makes a set at zero wake up (any request waiting or running).
    activation: float = 0.0
    cooldown_s: int = 300
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


def horizontal_pod_autoscaler(iset: InferenceSet, policy: AutoscalePolicy) -> JSON:
    """An autoscaling/v2 HPA on the set's scale subresource with a Pods metric: the average
    of the servers' gauge over the set's pods (the scale subresource's selector). The
    metric reaches the HPA through a custom-metrics adapter (e.g. prometheus-adapter)."""
    policy.check(hpa=True)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": iset.name, "namespace": iset.namespace, "labels": _labels(iset)},
        "spec": {
            "scaleTargetRef": _target(iset),
            "minReplicas": policy.min_replicas,
            "maxReplicas": policy.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": METRICS[policy.metric]},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": _number(policy.target),
                        },
                    },
                }
            ],
            # Model loads take minutes: scale down slowly, up at once.
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": policy.cooldown_s},
                "scaleUp": {"stabilizationWindowSeconds": 0},
            },
        },
    }
