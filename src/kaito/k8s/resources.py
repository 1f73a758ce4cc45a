"""Resource classes by apiVersion and kind, including kaito's and Karpenter's CRDs."""

from __future__ import annotations

from typing import Any

from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.resources.admissionregistration_v1 import ValidatingWebhookConfiguration
from lightkube.resources.apps_v1 import ControllerRevision, StatefulSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import (
    ConfigMap,
    Event,
    Node,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    Secret,
    Service,
    ServiceAccount,
)
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding

Workspace = create_namespaced_resource("kaito.sh", "v1beta1", "Workspace", "workspaces")
InferenceSet = create_namespaced_resource("kaito.sh", "v1beta1", "InferenceSet", "inferencesets")
NodeClaim = create_global_resource("karpenter.sh", "v1", "NodeClaim", "nodeclaims")

RESOURCES: dict[tuple[str, str], Any] = {
    ("v1", "ConfigMap"): ConfigMap,
    ("v1", "Service"): Service,
    ("v1", "Pod"): Pod,
    ("v1", "PersistentVolumeClaim"): PersistentVolumeClaim,
    ("v1", "PersistentVolume"): PersistentVolume,
    ("v1", "ServiceAccount"): ServiceAccount,
    ("rbac.authorization.k8s.io/v1", "Role"): Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): RoleBinding,
    ("v1", "Node"): Node,
    ("v1", "Secret"): Secret,
    ("v1", "Event"): Event,
    ("apps/v1", "StatefulSet"): StatefulSet,
    ("apps/v1", "ControllerRevision"): ControllerRevision,
    ("batch/v1", "Job"): Job,
    ("karpenter.sh/v1", "NodeClaim"): NodeClaim,
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): (
        ValidatingWebhookConfiguration
    ),
    ("kaito.sh/v1beta1", "Workspace"): Workspace,
    ("kaito.sh/v1beta1", "InferenceSet"): InferenceSet,
}


def resource_for(api_version: str, kind: str) -> Any:
    """The lightkube class for an apiVersion/kind; KeyError for kinds kaito never touches."""
    return RESOURCES[(api_version, kind)]
