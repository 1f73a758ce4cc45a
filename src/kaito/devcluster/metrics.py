"""metrics-server in the dev cluster: the resource-metrics API (metrics.k8s.io) the HPA reads.

It runs as a pod on the real node, as in any cluster: its ServiceAccount token is what the
kubelet authenticates (webhook TokenReview) and authorizes (`nodes/metrics`), the apiserver's
aggregation layer reaches it through a ClusterIP Service, and the cluster deletes it with
everything else. A host process would need its own certificates, a manual Endpoints object and
its own clean-up, and would skip the kubelet's authorization path the HPA depends on in real
clusters. Only the real node is scraped (`--node-selector`): kwok nodes have no kubelet.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kaito.devcluster.binaries import kaito_home
from kaito.devcluster.client import ApiClient

JSON = dict[str, Any]
# Must match the default of tools/setup.d/55-metrics-server.sh.
DEFAULT_VERSION = "v0.8.0"
NAME = "metrics-server"
NAMESPACE = "kube-system"
API_SERVICE = "v1beta1.metrics.k8s.io"
PORT = 10250
# Upstream's default is 60 s; a test waiting for the HPA wants fresher samples. 10 s is the
# lowest metrics-server accepts, and only with a kubelet request timeout of at most 90 % of it.
RESOLUTION_S = 10
_RBAC = "rbac.authorization.k8s.io"


def version() -> str:
    """metrics-server version ($METRICS_SERVER_VERSION, as for the setup hook)."""
    return os.environ.get("METRICS_SERVER_VERSION") or DEFAULT_VERSION


def binary() -> Path:
    """Where tools/setup.d/55-metrics-server.sh puts the static binary."""
    return kaito_home() / "metrics-server" / version() / "bin" / "metrics-server"


def _binding(kind: str, name: str, role_kind: str, role: str, **meta: str) -> JSON:
    return {
        "apiVersion": f"{_RBAC}/v1",
        "kind": kind,
        "metadata": {"name": name, **meta},
        "roleRef": {"apiGroup": _RBAC, "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
    }


def manifests(
    image: str,
    *,
    node_selector: Mapping[str, str],
    tolerations: Sequence[Mapping[str, str]] = (),
    resolution_s: int = RESOLUTION_S,
) -> list[JSON]:
    """Upstream's components.yaml (v0.8.0) for one node: RBAC, Deployment, Service, APIService.

    The kubelet's serving certificate is checked against the in-cluster CA (no
    `--kubelet-insecure-tls`), and the kubelet is dialled on its InternalIP, since node names
    do not resolve here.
    """
    labels = {"k8s-app": NAME}
    selector = ",".join(f"{k}={v}" for k, v in sorted(node_selector.items()))
    container: JSON = {
        "name": NAME,
        "image": image,
        "args": [
            f"--secure-port={PORT}",
            # Its self-signed serving pair; the image has no writable directory of its own.
            "--cert-dir=/tmp",
            "--kubelet-preferred-address-types=InternalIP",
            "--kubelet-use-node-status-port",
            f"--metric-resolution={resolution_s}s",
            f"--kubelet-request-timeout={resolution_s * 9 // 10}s",
            f"--node-selector={selector}",
        ],
        "ports": [{"name": "https", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"},
            "periodSeconds": 5,
        },
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
        },
        {
            "apiVersion": f"{_RBAC}/v1",
            "kind": "ClusterRole",
            "metadata": {
                "name": "system:aggregated-metrics-reader",
                "labels": {
                    f"{_RBAC}/aggregate-to-{verb}": "true" for verb in ("view", "edit", "admin")
                },
            },
            "rules": [
                {
                    "apiGroups": ["metrics.k8s.io"],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": f"{_RBAC}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"system:{NAME}"},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {
                    "apiGroups": [""],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        _binding(
            "RoleBinding",
            f"{NAME}-auth-reader",
            "Role",
            "extension-apiserver-authentication-reader",
            namespace=NAMESPACE,
        ),
        _binding(
            "ClusterRoleBinding",
            f"{NAME}:system:auth-delegator",
            "ClusterRole",
            "system:auth-delegator",
        ),
        _binding("ClusterRoleBinding", f"system:{NAME}", "ClusterRole", f"system:{NAME}"),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [{"name": "https", "port": 443, "targetPort": "https"}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": NAME,
                        "nodeSelector": dict(node_selector),
                        "tolerations": [dict(t) for t in tolerations],
                        "terminationGracePeriodSeconds": 1,
                        "containers": [container],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": API_SERVICE, "labels": labels},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": NAME, "namespace": NAMESPACE, "port": 443},
                # Its serving certificate is self-signed at start; upstream does the same.
                "insecureSkipTLSVerify": True,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def api_available(api_service: Mapping[str, Any]) -> bool:
    """The aggregator reached the backend (condition Available=True)."""
    conditions = (api_service.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)


def install(
    client: ApiClient,
    image: str,
    *,
    node_selector: Mapping[str, str],
    tolerations: Sequence[Mapping[str, str]] = (),
    timeout_s: float = 120.0,
) -> JSON:
    """Apply metrics-server and wait until the aggregator marks its APIService Available."""
    for obj in manifests(image, node_selector=node_selector, tolerations=tolerations):
        client.apply(obj)
    path = f"/apis/apiregistration.k8s.io/v1/apiservices/{API_SERVICE}"
    return client.wait_for(
        lambda: found if api_available(found := client.get(path)) else None,
        timeout_s=timeout_s,
        interval_s=1.0,
        what=f"APIService {API_SERVICE} to become Available",
    )


def uninstall(client: ApiClient, image: str = "") -> None:
    """Delete what `install` applied (the APIService first, so discovery stops using it)."""
    for obj in reversed(manifests(image or NAME, node_selector={})):
        client.delete(obj)


def pod_usage(client: ApiClient, namespace: str, selector: str = "") -> dict[str, int]:
    """CPU use in millicores per pod from metrics.k8s.io (what `kubectl top pod` shows)."""
    query = {"labelSelector": selector} if selector else None
    listing = client.request(
        "GET", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods", query=query
    )
    return {
        item["metadata"]["name"]: sum(
            millicores(c["usage"].get("cpu", "0")) for c in item.get("containers", [])
        )
        for item in listing.get("items", [])
    }


def millicores(quantity: str) -> int:
    """A CPU quantity as metrics-server writes it (`123456789n`, `5m`, `1`) in millicores."""
    suffixes = {"n": 1e-6, "u": 1e-3, "m": 1.0}
    if quantity and quantity[-1] in suffixes:
        return round(float(quantity[:-1]) * suffixes[quantity[-1]])
    return round(float(quantity) * 1000)
