"""InferenceSet (kaito.sh/v1beta1): N Workspaces from one template, with a scale subresource.

Field-compatible with upstream's InferenceSet; the template's `inference` is the Workspace's
InferenceSpec, so a set is validated by turning it into the Workspace it creates.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints

from kaito.api.workspace import (
    GROUP,
    MAX_NODE_COUNT,
    Condition,
    InferenceSpec,
    LabelSelector,
    ObjectMeta,
    PartitionSpec,
    Schemaless,
    _Model,
)

KIND = "InferenceSet"
PLURAL = "inferencesets"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_PATH = "charts/kaito/crds/kaito.sh_inferencesets.yaml"
# Bounds the Workspaces (and so the NodeClaims) one set can ask for; far above real use.
MAX_REPLICAS = 1000
LABEL_INFERENCESET = "kaito.sh/inferenceset"
ANNOTATION_TEMPLATE_HASH = "kaito.sh/inferenceset-template-hash"
DEFAULT_UPDATE_STRATEGY: dict[str, Any] = {
    "type": "RollingUpdate",
    "rollingUpdate": {"maxUnavailable": 1},
}


class InferenceSetResource(_Model):
    """The nodes of each replica (each replica is one Workspace)."""

    instance_type: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None, description="GPU instance type (VM SKU) of every replica's nodes."
    )
    partition: PartitionSpec | None = Field(
        default=None, description="GPU partitioning for BYO nodes, copied to each Workspace."
    )
    count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_NODE_COUNT,
        description=(
            "kaito extension: nodes per replica for the transformers runtime (a Workspace's "
            "resource.count); unset lets the estimator decide."
        ),
    )


class InferenceSetTemplate(_Model):
    """What each Workspace of the set looks like."""

    metadata: Schemaless | None = Field(
        default=None,
        description="Labels and annotations copied to each Workspace.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    resource: InferenceSetResource = Field(
        default_factory=InferenceSetResource, description="Nodes of each replica."
    )
    inference: InferenceSpec = Field(description="The model to serve, as in a Workspace.")
    cache: Schemaless | None = Field(
        default=None,
        description="Upstream's distributed cache settings; accepted and not used.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class AutoUpgradePolicy(_Model):
    """Upstream's base-image auto-upgrade; accepted, reported, not acted on (docs/api.md)."""

    enabled: bool | None = Field(default=False, description="Upgrade replicas automatically.")
    strategy: Literal["InPlace", "Surge"] | None = Field(
        default="InPlace", description="InPlace or Surge."
    )
    maintenance_window: Schemaless | None = Field(
        default=None,
        description="schedule (cron, UTC) and duration of the upgrade window.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class InferenceSetSpec(_Model):
    """Desired state: how many replicas of which template."""

    template: InferenceSetTemplate = Field(description="Template of each Workspace.")
    replicas: int | None = Field(
        default=1,
        ge=0,
        le=MAX_REPLICAS,
        description="Workspaces to keep (default 1; 0 keeps none). The scale subresource.",
    )
    node_count_limit: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Most GPU nodes the set may use in all (replicas x nodes per replica); "
            "unset or 0 means no limit. Replicas beyond it are not created."
        ),
    )
    label_selector: LabelSelector = Field(
        description="resource.labelSelector of every Workspace (the nodes' labels)."
    )
    update_strategy: Schemaless | None = Field(
        default_factory=lambda: dict(DEFAULT_UPDATE_STRATEGY),
        description=(
            "StatefulSet-style: RollingUpdate (rollingUpdate.maxUnavailable, partition) or "
            "OnDelete."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    auto_upgrade: AutoUpgradePolicy | None = Field(
        default=None, description="Base image auto-upgrade (accepted, not acted on)."
    )


class InferenceSetStatus(_Model):
    """Observed state, written by the controller."""

    model_config = ConfigDict(extra="allow")

    replicas: int | None = Field(default=None, ge=0, description="Workspaces that exist.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Workspaces ready.")
    selector: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Label selector of all the set's inference pods."
    )
    conditions: list[Condition] | None = Field(default=None, description="Conditions.")
    performance: Schemaless | None = Field(
        default=None,
        description="Upstream's aggregated benchmark metrics (not written).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    auto_upgrade: Schemaless | None = Field(
        default=None,
        description="Upstream's auto-upgrade report (not written).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class InferenceSet(_Model):
    """A KAITO InferenceSet: replicas of one inference Workspace template."""

    api_version: Literal["kaito.sh/v1beta1"] = Field(
        default="kaito.sh/v1beta1", description="kaito.sh/v1beta1."
    )
    kind: Literal["InferenceSet"] = Field(default="InferenceSet", description="InferenceSet.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard metadata.")
    spec: InferenceSetSpec = Field(description="Desired state.")
    status: InferenceSetStatus | None = Field(default=None, description="Observed state.")

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def replicas(self) -> int:
        return self.spec.replicas if self.spec.replicas is not None else 1

    @property
    def selector(self) -> str:
        """The set's pods, as the scale subresource reports it to the HPA and KEDA."""
        return f"{LABEL_INFERENCESET}={self.name}"


def parse_inferenceset(body: dict[str, Any]) -> InferenceSet:
    """Parse an apiserver or YAML body; raises pydantic.ValidationError when malformed."""
    return InferenceSet.model_validate(body)


def _template_meta(iset: InferenceSet, key: str) -> dict[str, str]:
    value = (iset.spec.template.metadata or {}).get(key) or {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def workspace_name(iset: InferenceSet, index: int) -> str:
    return f"{iset.name}-{index}"


def template_hash(iset: InferenceSet) -> str:
    """What a replica is made of: a change rolls the replicas (replicas itself does not)."""
    parts = {
        "template": iset.spec.template.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "labelSelector": iset.spec.label_selector.model_dump(
            by_alias=True, exclude_none=True, mode="json"
        ),
    }
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def workspace_body(iset: InferenceSet, index: int) -> dict[str, Any]:
    """The Workspace the set keeps at `index`, controlled by the set (ownerReference)."""
    template = iset.spec.template
    resource: dict[str, Any] = {
        "labelSelector": iset.spec.label_selector.model_dump(
            by_alias=True, exclude_none=True, mode="json"
        )
    }
    if template.resource.instance_type:
        resource["instanceType"] = template.resource.instance_type
    if template.resource.count is not None:
        resource["count"] = template.resource.count
    if template.resource.partition is not None:
        resource["partition"] = template.resource.partition.model_dump(
            by_alias=True, exclude_none=True, mode="json"
        )
    metadata: dict[str, Any] = {
        "name": workspace_name(iset, index),
        "namespace": iset.namespace,
        "labels": {**_template_meta(iset, "labels"), LABEL_INFERENCESET: iset.name},
        "annotations": {
            **_template_meta(iset, "annotations"),
            ANNOTATION_TEMPLATE_HASH: template_hash(iset),
        },
    }
    if iset.metadata.uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": iset.name,
                "uid": iset.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": "Workspace",
        "metadata": metadata,
        "resource": resource,
        "inference": template.inference.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }
