"""Workspace models for kaito.sh/v1alpha1 and v1beta1: one shape, no `spec` wrapper, camelCase."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from kaito.contract.files import INFERENCE_CONFIG_FILE, TRAINING_CONFIG_FILE
from kaito.contract.progress import Phase

GROUP = "kaito.sh"
KIND = "Workspace"
V1ALPHA1 = "v1alpha1"
V1BETA1 = "v1beta1"
VERSIONS = (V1ALPHA1, V1BETA1)
STORAGE_VERSION = V1BETA1
API_VERSIONS = tuple(f"{GROUP}/{v}" for v in VERSIONS)

# v1alpha1 defaulted the instance type in its schema; v1beta1 dropped the default (BYO nodes).
V1ALPHA1_DEFAULT_INSTANCE_TYPE = "Standard_NC24ads_A100_v4"

ANNOTATION_BYPASS_RESOURCE_CHECKS = "kaito.sh/bypass-resource-checks"
ANNOTATION_RUNTIME = "kaito.sh/runtime"
ANNOTATION_NODE_IMAGE_FAMILY = "kaito.sh/node-image-family"
ANNOTATION_ENABLE_LB = "kaito.sh/enablelb"
ANNOTATION_PERFORMANCE_MODE = "kaito.sh/performance-mode"
ANNOTATION_USE_LOCAL_WEIGHTS = "kaito.sh/use-local-weights"
ANNOTATION_DISABLE_BENCHMARK = "kaito.sh/disable-benchmark"
# Name of a Secret in the Workspace's namespace whose `api-key` entry the inference server
# requires as a bearer token (docs/api.md).
ANNOTATION_API_KEY_SECRET = "kaito.sh/api-key-secret"

DEFAULT_LORA_CONFIG = "lora-params-template"
DEFAULT_QLORA_CONFIG = "qlora-params-template"
MAX_ADAPTERS = 10
MAX_NODE_COUNT = 100
DEFAULT_ADAPTER_STRENGTH = "1.0"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# v0.3.0's rule, which admits the legacy uppercase placeholder, OR a well-formed Docker reference
# (lowercase repository, optional tag, optional digest), so `busybox` and digests work too.
COMPAT_IMAGE = r"(.+/[^:/]+):([^:/]+)"
DOCKER_REFERENCE = (
    r"([a-zA-Z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*"
    r"(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?"
)
IMAGE_PATTERN = rf"^({COMPAT_IMAGE}|{DOCKER_REFERENCE})$"
# Adapter strength is a float in [0, 1] carried as a string (upstream keeps it a *string).
STRENGTH_PATTERN = r"^(0(\.[0-9]*)?|1(\.0*)?|\.[0-9]+)$"
URL_PATTERN = r"^[hH][tT][tT][pP][sS]?://[^/?#\s]+\S*$"

# Bounds keep the apiserver's CEL cost estimates finite; they are far above any real use.
Name = Annotated[str, StringConstraints(min_length=1, max_length=253)]
# No DNS pattern: the legacy example names its secret ACR_REGISTRY_SECRET_HERE and must be admitted.
SecretName = Annotated[str, StringConstraints(min_length=1, max_length=253)]
Image = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=IMAGE_PATTERN)]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=317)]
LabelValue = Annotated[str, StringConstraints(max_length=63)]
Url = Annotated[str, StringConstraints(max_length=4096, pattern=URL_PATTERN)]
# Schemaless pass-through objects (PodTemplateSpec, VolumeSource): the apiserver keeps them as is.
Schemaless = dict[str, Any]


class _Model(BaseModel):
    # strict: a string "1" is not a count; the CRD schema would reject it, so must we.
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        protected_namespaces=(),
    )


class LabelSelectorRequirement(_Model):
    """A label selector requirement; kaito only supports operator In with exactly one value."""

    key: LabelKey = Field(description="The label key that the selector applies to.")
    operator: Annotated[str, StringConstraints(min_length=1, max_length=16)] = Field(
        description="Only `In` is supported (the selector must reduce to matchLabels)."
    )
    values: list[LabelValue] | None = Field(
        default=None, max_length=64, description="Exactly one value for operator In."
    )


class LabelSelector(_Model):
    """Selects the GPU nodes of this workspace; new nodes get these labels."""

    match_labels: dict[LabelKey, LabelValue] | None = Field(
        default=None,
        max_length=64,
        description="Labels that the workspace's nodes carry; created nodes are labelled so.",
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=32, description="Requirements with operator In and one value."
    )

    def as_map(self) -> dict[str, str]:
        """The selector as a plain label map (matchExpressions `In [v]` folded in)."""
        labels = dict(self.match_labels or {})
        for expr in self.match_expressions or []:
            if expr.operator == "In" and expr.values and len(expr.values) == 1:
                labels[expr.key] = expr.values[0]
        return labels


class PartitionSpec(_Model):
    """Splits a GPU (MIG profile) or takes whole accelerators; BYO nodes only (v1beta1)."""

    mode: Literal["mig", "accelerator"] = Field(description="`mig` or `accelerator`.")
    profile: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, description="MIG profile such as `1g.10gb` (mode mig only)."
    )
    count: int | None = Field(
        default=None, ge=1, le=64, description="Whole GPUs to use (mode accelerator only)."
    )


class ResourceSpec(_Model):
    """The GPU nodes the workspace runs on."""

    count: int | None = Field(
        default=1,
        ge=1,
        le=MAX_NODE_COUNT,
        description=(
            "Number of GPU nodes (default 1; must be 1 for tuning). Deprecated in v1beta1: "
            "the controller estimates the node count for vLLM."
        ),
    )
    instance_type: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None,
        description=(
            "Cloud GPU instance type (VM SKU), e.g. Standard_NC24ads_A100_v4 or g5.2xlarge. "
            "Immutable. v1alpha1 defaults it to Standard_NC24ads_A100_v4."
        ),
    )
    label_selector: LabelSelector = Field(
        description="Selects the nodes of this workspace (matchLabels). Immutable."
    )
    preferred_nodes: list[Annotated[str, StringConstraints(max_length=253)]] | None = Field(
        default=None,
        max_length=128,
        description="Deprecated: existing nodes to prefer by name; accepted and ignored.",
    )
    partition: PartitionSpec | None = Field(
        default=None, description="GPU partitioning for BYO nodes (v1beta1). Immutable."
    )

    @property
    def node_count(self) -> int:
        """The requested node count; an unset count means one node."""
        return self.count if self.count is not None else 1


class PresetOptions(_Model):
    """Options for a preset image (deprecated in v1beta1)."""

    image: Image | None = Field(
        default=None, description="Private preset image; required with accessMode private."
    )
    image_pull_secrets: list[SecretName] | None = Field(
        default=None, max_length=16, description="Secrets to pull the private preset image."
    )


class PresetSpec(_Model):
    """A model from the kaito preset catalog (`kaito presets` lists them)."""

    name: Name = Field(description="Preset (model) name, e.g. phi-3-mini-128k-instruct. Immutable.")
    access_mode: Literal["public", "private"] | None = Field(
        default="public",
        description="public (default) or private (needs presetOptions.image). Deprecated.",
    )
    preset_options: PresetOptions | None = Field(
        default=None, description="Private image and pull secrets. Deprecated."
    )
    model_access_secret: SecretName | None = Field(
        default=None,
        description="Secret with key HF_TOKEN, for models that need Hugging Face auth (v1beta1).",
    )


class DataSource(_Model):
    """Where data comes from: exactly one of urls, image or volumeSource."""

    name: Annotated[str, StringConstraints(max_length=253, pattern=DNS1123_SUBDOMAIN)] | None = (
        Field(default=None, description="DNS-1123 name, used in container and volume names.")
    )
    urls: list[Url] | None = Field(
        default=None, max_length=1000, description="http(s) URLs of the data files."
    )
    volume_source: Schemaless | None = Field(
        default=None,
        description="A core/v1 VolumeSource holding the data (e.g. a persistentVolumeClaim).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    image: Image | None = Field(default=None, description="OCI image holding the data under /data.")
    image_pull_secrets: list[SecretName] | None = Field(
        default=None, max_length=16, description="Secrets to pull the image."
    )


class DataDestination(_Model):
    """Where results go: exactly one of image (with imagePushSecret) or volumeSource."""

    volume_source: Schemaless | None = Field(
        default=None,
        description="A core/v1 VolumeSource to write the adapter to.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    image: Image | None = Field(
        default=None, description="OCI image reference the tuned adapter is pushed to."
    )
    image_push_secret: SecretName | None = Field(
        default=None,
        description="dockerconfigjson Secret allowed to push `image`; required with image.",
    )


class AdapterSpec(_Model):
    """A LoRA adapter applied on top of the inference preset."""

    source: DataSource = Field(
        description="Adapter source: name plus image or volumeSource (urls are not supported)."
    )
    strength: Annotated[str, StringConstraints(max_length=32, pattern=STRENGTH_PATTERN)] | None = (
        Field(default=None, description="Adapter weight, a number in [0, 1] (default 1.0).")
    )

    @property
    def effective_strength(self) -> str:
        return self.strength if self.strength is not None else DEFAULT_ADAPTER_STRENGTH


class InferenceSpec(_Model):
    """Serve a model: a catalog preset (with optional adapters) or your own pod template."""

    preset: PresetSpec | None = Field(
        default=None, description="The model to serve. Immutable. Exclusive with template."
    )
    template: Schemaless | None = Field(
        default=None,
        description="A full PodTemplateSpec for a custom inference pod. Exclusive with preset.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    config: Name | None = Field(
        default=None,
        description=f"ConfigMap (key {INFERENCE_CONFIG_FILE}) with runtime parameters.",
    )
    adapters: list[AdapterSpec] | None = Field(
        default=None,
        max_length=MAX_ADAPTERS,
        description=f"Up to {MAX_ADAPTERS} LoRA adapters with unique source names.",
    )


class TuningSpec(_Model):
    """Fine-tune a preset with LoRA or QLoRA and push the adapter."""

    preset: PresetSpec = Field(description="The model to tune. Immutable.")
    method: Literal["lora", "qlora"] = Field(description="lora or qlora. Immutable.")
    config: Name | None = Field(
        default=None,
        description=(
            f"ConfigMap (key {TRAINING_CONFIG_FILE}) with training parameters; empty means "
            "lora-params-template or qlora-params-template, chosen by method."
        ),
    )
    input: DataSource = Field(
        description="Training data: exactly one of urls, image, volumeSource."
    )
    output: DataDestination = Field(
        description="Where the adapter goes: image plus imagePushSecret, or volumeSource."
    )

    @property
    def config_map_name(self) -> str:
        """The training ConfigMap: the user's, else the default template for the method."""
        if self.config:
            return self.config
        return DEFAULT_QLORA_CONFIG if self.method == "qlora" else DEFAULT_LORA_CONFIG


class Condition(_Model):
    """A metav1.Condition."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)] = Field(
        description="Condition type, e.g. ResourceReady."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(default=None, ge=0, description="Generation seen.")
    last_transition_time: str | None = Field(default=None, description="RFC 3339 time.")
    reason: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="PascalCase reason."
    )
    message: Annotated[str, StringConstraints(max_length=32768)] | None = Field(
        default=None, description="What happened and what to do."
    )


class TuningProgress(_Model):
    """Live progress of the tuning job; mirrors the tuning runtime's progress.json."""

    phase: Phase | None = Field(
        default=None, description="preparing, loading, training, saving, completed, ..."
    )
    progress_percent: int | None = Field(
        default=None, ge=0, le=100, description="Percent of training steps done (0-100)."
    )
    step: int | None = Field(default=None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Planned optimizer steps.")
    epoch: float | None = Field(default=None, ge=0, description="Epochs done (fractional).")
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest evaluation loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, ge=0, description="Training speed.")
    eta_seconds: float | None = Field(default=None, ge=0, description="Estimated seconds left.")
    resumed_from_step: int | None = Field(
        default=None, ge=0, description="Checkpoint step this run resumed from."
    )
    restarts: int | None = Field(
        default=None, ge=0, description="Tuning pods that failed and were replaced."
    )
    adapter_image: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="The pushed adapter image reference."
    )
    adapter_digest: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None, description="Digest of the pushed adapter image (sha256:...)."
    )
    message: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Short human-readable note."
    )
    started_at: str | None = Field(default=None, description="RFC 3339 start time.")
    updated_at: str | None = Field(default=None, description="RFC 3339 time of the report.")


class ScaleSpec(_Model):
    """The replica count the scale subresource (`kubectl scale`, HPA, KEDA) reads and writes.

    The apiserver requires the scale subresource's replica path under `.spec`, and the
    Workspace keeps its fields at the root, so `spec` holds only this.
    """

    replicas: int | None = Field(
        default=None,
        ge=1,
        le=MAX_NODE_COUNT,
        description=(
            "Inference replicas (default 1), each on its own nodes. Above 1 only for inference "
            "with one node per replica; the StatefulSet and NodeClaims follow it."
        ),
    )


class WorkspaceStatus(_Model):
    """Observed state, written by the controller."""

    # The controller owns status; unknown keys from newer controllers must survive a read.
    model_config = ConfigDict(extra="allow")

    worker_nodes: list[str] | None = Field(default=None, description="Sorted node names.")
    conditions: list[Condition] | None = Field(default=None, description="Conditions.")
    target_node_count: int | None = Field(
        default=None,
        ge=0,
        description="Nodes the workspace needs: perReplicaNodeCount x spec.replicas.",
    )
    per_replica_node_count: int | None = Field(
        default=None, ge=0, description="Nodes one inference replica needs; set once."
    )
    replicas: int | None = Field(
        default=None, ge=0, description="Inference replicas that exist (scale subresource)."
    )
    ready_replicas: int | None = Field(default=None, ge=0, description="Replicas that are ready.")
    selector: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Label selector of the inference pods (scale subresource)."
    )
    state: Literal["Pending", "Ready", "NotReady", "Running", "Succeeded", "Failed"] | None = Field(
        default=None, description="Pending, Ready, NotReady, Running, Succeeded or Failed."
    )
    tuning: TuningProgress | None = Field(default=None, description="Tuning progress.")
    performance: Schemaless | None = Field(
        default=None,
        description="Benchmark metrics (name -> description, value, unit, config).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions or [] if c.type == type_), None)


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta kaito reads; everything else passes through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None


class Workspace(_Model):
    """A KAITO Workspace: resource plus exactly one of inference or tuning."""

    api_version: Literal["kaito.sh/v1alpha1", "kaito.sh/v1beta1"] = Field(
        default="kaito.sh/v1beta1", description="kaito.sh/v1alpha1 or kaito.sh/v1beta1."
    )
    kind: Literal["Workspace"] = Field(default="Workspace", description="Workspace.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard metadata.")
    spec: ScaleSpec | None = Field(
        default=None,
        description="Scale: spec.replicas (the only field under spec).",
        # The apiserver answers a scale request only when spec.replicas exists, so the
        # schema defaults it on every Workspace; the model reads a missing one as 1.
        json_schema_extra={"default": {"replicas": 1}},
    )
    resource: ResourceSpec | None = Field(default=None, description="The GPU nodes to use.")
    inference: InferenceSpec | None = Field(
        default=None, description="Serve a model. Exclusive with tuning."
    )
    tuning: TuningSpec | None = Field(
        default=None, description="Fine-tune a model. Exclusive with inference."
    )
    status: WorkspaceStatus | None = Field(default=None, description="Observed state.")

    @property
    def version(self) -> str:
        return self.api_version.split("/", 1)[1]

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.metadata.annotations or {})

    @property
    def is_tuning(self) -> bool:
        return self.tuning is not None

    @property
    def preset_name(self) -> str | None:
        """The preset name of inference or tuning, as written (resolve it with the catalog)."""
        if self.tuning is not None:
            return self.tuning.preset.name
        if self.inference is not None and self.inference.preset is not None:
            return self.inference.preset.name
        return None

    @property
    def node_count(self) -> int:
        """resource.count, treating a missing resource or count as 1 (upstream dereferenced nil)."""
        return self.resource.node_count if self.resource is not None else 1

    @property
    def replicas(self) -> int:
        """spec.replicas, treating a missing spec or replicas as 1."""
        if self.spec is None or self.spec.replicas is None:
            return 1
        return self.spec.replicas

    @property
    def instance_type(self) -> str:
        return (self.resource.instance_type or "") if self.resource is not None else ""

    def to_body(self) -> dict[str, Any]:
        """The JSON body as the apiserver stores it (camelCase, unset fields omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def apply_version_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """Return a copy with the defaults that the served version's CRD schema applies.

    The pydantic defaults cover what both versions share; v1alpha1 additionally defaults
    resource.instanceType, and only when `resource` itself is present (schema semantics).
    """
    out = dict(body)
    if out.get("apiVersion") == f"{GROUP}/{V1ALPHA1}" and isinstance(out.get("resource"), dict):
        resource = dict(out["resource"])
        resource.setdefault("instanceType", V1ALPHA1_DEFAULT_INSTANCE_TYPE)
        out["resource"] = resource
    return out


def parse_workspace(body: dict[str, Any]) -> Workspace:
    """Parse an apiserver or YAML body into a Workspace, with its version's schema defaults.

    Raises pydantic.ValidationError on a malformed body; use
    `kaito.api.validation.validate_structure` for structured FieldErrors instead.
    """
    return Workspace.model_validate(apply_version_defaults(body))


def convert(body: dict[str, Any], to_version: str) -> dict[str, Any]:
    """Convert a Workspace body to `to_version` (v1alpha1 or v1beta1, with or without group).

    Both served schemas carry the same fields, so conversion only changes apiVersion (what
    the apiserver's strategy None does) plus the version's own defaults. Nothing is lost in
    either direction.
    """
    version = to_version.split("/")[-1]
    if version not in VERSIONS:
        raise ValueError(f"unknown Workspace version {to_version!r}; use one of {VERSIONS}")
    source = apply_version_defaults(body)
    out = dict(source)
    out["apiVersion"] = f"{GROUP}/{version}"
    return apply_version_defaults(out)
