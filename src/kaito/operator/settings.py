"""The operator's settings: one frozen object read once from `KAITO_*` environment variables."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from kaito.manifests.options import (
    DEFAULT_RUNTIME_IMAGE,
    NODE_PROVISIONERS,
    ClusterOptions,
    NodeProvisioner,
)
from kaito.presets.limits import Limits
from kaito.reconcile.leadership import check_timings

PREFIX = "KAITO_"


class SettingsError(ValueError):
    """An environment variable has a value the operator cannot use; the message names it."""


TOLERATION_FIELDS = ("key", "operator", "value", "effect", "tolerationSeconds")
TOLERATION_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")


def parse_tolerations(raw: str) -> tuple[dict[str, Any], ...]:
    """A JSON list of core/v1 Toleration objects; ValueError says what is wrong where."""
    if not raw.strip():
        return ()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from exc
    if not isinstance(value, list):
        raise ValueError("expected a JSON list of Toleration objects")
    out: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"item {index}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object with {', '.join(TOLERATION_FIELDS)}")
        unknown = sorted(set(item) - set(TOLERATION_FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        operator = item.get("operator", "Equal")
        if operator not in ("Equal", "Exists"):
            raise ValueError(f"{where}: operator must be Equal or Exists, not {operator!r}")
        if item.get("effect", "") not in TOLERATION_EFFECTS:
            raise ValueError(
                f"{where}: effect must be NoSchedule, PreferNoSchedule or NoExecute, "
                f"not {item['effect']!r}"
            )
        for name in ("key", "value", "effect"):
            if name in item and not isinstance(item[name], str):
                raise ValueError(f"{where}: {name} must be a string")
        if operator == "Exists" and item.get("value"):
            raise ValueError(f"{where}: operator Exists takes no value")
        if not item.get("key") and operator != "Exists":
            raise ValueError(f"{where}: an empty key needs operator Exists")
        seconds = item.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            raise ValueError(f"{where}: tolerationSeconds must be an integer")
        out.append(dict(item))
    return tuple(out)


def _setting(default: Any, doc: str) -> Any:
    """A field with its documentation (unit and meaning) kept in the field metadata."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    """Operator settings. Each field reads `KAITO_<FIELD NAME IN UPPER CASE>`."""

    cloud_provider: str = _setting(
        "azure", "azure | aws | arc: SKU table and NodeClaim NodeClass kind."
    )
    node_provisioner: NodeProvisioner = _setting(  # noqa: RUF009
        "azure-gpu-provisioner",
        "azure-gpu-provisioner | karpenter: create karpenter.sh/v1 NodeClaims; "
        "byo: use existing labelled GPU nodes only, never create nodes.",
    )
    runtime_image: str = _setting(
        DEFAULT_RUNTIME_IMAGE,
        "Image with kaito.runtime: inference server, tuning runtime, pullers, pusher.",
    )
    image_pull_policy: str = _setting("IfNotPresent", "Pull policy of runtime_image.")
    default_node_image_family: str = _setting(
        "ubuntu", "ubuntu | azurelinux, NodeClaim annotation kaito.sh/node-image-family."
    )
    node_class_name: str = _setting("default", "NodeClaim spec.nodeClassRef.name.")
    release_namespace: str = _setting("kaito-system", "Namespace of the default tuning templates.")
    feature_vllm: bool = _setting(
        True, "vLLM feature gate; false serves every preset with transformers."
    )
    watch_namespace: str = _setting("", "Reconcile only this namespace; empty: the whole cluster.")
    max_concurrent_reconciles: int = _setting(
        10, "Reconciles running at once across all workspaces (count)."
    )
    resync_seconds: float = _setting(
        300.0, "Seconds between reconciles of a workspace that nothing happens to."
    )
    error_backoff_seconds: float = _setting(
        5.0,
        "Seconds before retrying a Workspace whose last pass failed (an API error writing a "
        "child, a name conflict); doubles per failure in a row.",
    )
    error_backoff_max_seconds: float = _setting(
        300.0, "Longest wait between retries of a failing Workspace (seconds)."
    )
    max_nodeclaims_per_workspace: int = _setting(
        8, "Most NodeClaims (GPU nodes) one Workspace may ask for (count)."
    )
    max_nodeclaims_total: int = _setting(
        64, "Most NodeClaims all Workspaces together may hold (count); 0: no limit."
    )
    node_ready_timeout_seconds: float = _setting(
        1800.0,
        "Seconds a NodeClaim may take to become Ready before the Workspace reports "
        "NodeClaimTimeout and stops replacing it; 0: wait forever.",
    )
    allow_non_gpu_instance_types: bool = _setting(
        False,
        "Admit GPU presets on instance types kaito does not know as GPU SKUs (CPU or unknown "
        "types); CPU presets are admitted on any type either way.",
    )
    allow_privileged_templates: bool = _setting(
        False,
        "Admit custom pod templates that ask for privileged containers, added capabilities, "
        "hostPath volumes or host namespaces.",
    )
    webhook_enabled: bool = _setting(False, "Serve the validating admission webhook.")
    webhook_address: str = _setting(
        "0.0.0.0",
        "Address the webhook server listens on.",
    )
    webhook_host: str = _setting(
        "", "Host name or IP the apiserver calls (empty: webhook_address)."
    )
    webhook_port: int = _setting(9443, "Webhook HTTPS port (chart value webhook.port).")
    webhook_cert_dir: str = _setting(
        "", "Directory with tls.crt and tls.key (optional ca.crt); empty: self-signed."
    )
    webhook_managed: bool = _setting(
        True,
        "Let the operator create and update the ValidatingWebhookConfiguration "
        "validation.workspace.kaito.sh itself (development; it stays registered when the "
        "operator stops). The chart installs the configuration instead and sets false.",
    )
    tuning_cluster_role: str = _setting(
        "kaito-tuning",
        "ClusterRole (the chart's) bound to each tuning namespace's kaito-tuning ServiceAccount: "
        "patch pods, narrowed by an admission policy to its own pod's progress annotation.",
    )
    webhook_configuration: str = _setting(
        "",
        "Name of a ValidatingWebhookConfiguration installed with the chart whose caBundle "
        "this process sets to its self-signed CA at start (patch only, never create or "
        "delete); empty: none.",
    )
    webhook_service: str = _setting(
        "",
        "<namespace>/<name> of the Service in front of the webhook (the chart's); set, the "
        "apiserver calls that Service, else https://<webhook_host>:<webhook_port>.",
    )
    preset_registry: str = _setting(
        "",
        "Registry (and path) holding presets' weights images, e.g. a mirror such as "
        "registry.internal.example/kaito; set, every preset pulls "
        "<registry>/kaito-<preset>:<tag> (docs/weights.md). Empty: the catalog's images.",
    )
    preset_pull_secrets: str = _setting(
        "",
        "Comma-separated dockerconfigjson Secret names for preset_registry; each must exist "
        "in the Workspace's namespace.",
    )
    leader_election: bool = _setting(
        False,
        "Reconcile only while holding the Lease leader_election_name (coordination.k8s.io/v1); "
        "the webhook serves on every replica either way. The chart turns it on.",
    )
    leader_election_name: str = _setting("kaito-operator", "Name of the leader-election Lease.")
    leader_election_namespace: str = _setting(
        "", "Namespace of the Lease; empty: release_namespace."
    )
    leader_election_identity: str = _setting(
        "", "This candidate's holderIdentity; empty: host (pod) name plus a random suffix."
    )
    leader_election_lease_duration: float = _setting(
        15.0, "Seconds a standby waits after the last renewal it saw before taking over."
    )
    leader_election_renew_deadline: float = _setting(
        10.0, "Seconds the leader keeps failing to renew before it stops (exits the process)."
    )
    leader_election_retry_period: float = _setting(
        2.0, "Seconds between renewals by the leader and attempts by standbys."
    )
    tuning_allowed_hosts: str = _setting(
        "",
        "Comma-separated host names, addresses or networks (CIDR) that tuning dataset URLs "
        "may reach although internal, e.g. an in-cluster data server; admission accepts them "
        "and each tuning Job's downloader gets them as KAITO_TUNING_ALLOWED_HOSTS "
        "(docs/tuning.md). Empty: only public addresses.",
    )
    workload_tolerations: str = _setting(
        "",
        "JSON list of Toleration objects added to every workload pod kaito creates "
        "(inference, tuning, preflight, custom templates) after the built-in GPU ones, e.g. "
        '[{"key":"dedicated","operator":"Equal","value":"ai","effect":"NoSchedule"}]. '
        "Empty: none.",
    )
    plain_http_registries: str = _setting(
        "",
        "Comma-separated registries (host or host:port; a host alone matches any port) that "
        "pods pull weights and adapters from and push adapters to over plain HTTP; every "
        "runtime container gets them as KAITO_PLAIN_HTTP_REGISTRIES. Empty: only loopback.",
    )
    liveness_endpoint: str = _setting(
        "",
        "kopf's health endpoint for probes, e.g. http://0.0.0.0:8080/healthz; empty: none.",
    )

    @property
    def lease_namespace(self) -> str:
        return self.leader_election_namespace or self.release_namespace

    def limits(self) -> Limits:
        return Limits(
            allow_non_gpu_instance_types=self.allow_non_gpu_instance_types,
            allow_privileged_templates=self.allow_privileged_templates,
            max_nodeclaims_per_workspace=self.max_nodeclaims_per_workspace,
        )

    def cluster_options(self) -> ClusterOptions:
        return ClusterOptions(
            cloud_provider=self.cloud_provider,
            node_provisioner=self.node_provisioner,
            runtime_image=self.runtime_image,
            image_pull_policy=self.image_pull_policy,
            default_node_image_family=self.default_node_image_family,
            node_class_name=self.node_class_name,
            release_namespace=self.release_namespace,
            vllm_enabled=self.feature_vllm,
            tuning_cluster_role=self.tuning_cluster_role,
            limits=self.limits(),
            node_ready_timeout_s=self.node_ready_timeout_seconds,
            preset_registry=self.preset_registry.rstrip("/"),
            preset_pull_secrets=tuple(
                name for name in (n.strip() for n in self.preset_pull_secrets.split(",")) if name
            ),
            tuning_allowed_hosts=tuple(
                h for h in (n.strip() for n in self.tuning_allowed_hosts.split(",")) if h
            ),
            workload_tolerations=parse_tolerations(self.workload_tolerations),
            plain_http_registries=tuple(
                r for r in (n.strip() for n in self.plain_http_registries.split(",")) if r
            ),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every field from `KAITO_<NAME>`; unset variables keep the defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            key = PREFIX + item.name.upper()
            if key not in env:
                continue
            raw = env[key].strip()
            default = item.default
            try:
                if isinstance(default, bool):
                    if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                        raise ValueError("expected true or false")
                    values[item.name] = raw.lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    values[item.name] = int(raw)
                elif isinstance(default, float):
                    values[item.name] = float(raw)
                else:
                    values[item.name] = raw
            except ValueError as exc:
                raise SettingsError(f"{key}={raw!r}: {exc}") from exc
        settings = cls(**values)
        if settings.node_provisioner not in NODE_PROVISIONERS:
            raise SettingsError(
                f"{PREFIX}NODE_PROVISIONER={settings.node_provisioner!r}: use one of "
                f"{', '.join(NODE_PROVISIONERS)}"
            )
        try:
            check_timings(
                settings.leader_election_lease_duration,
                settings.leader_election_renew_deadline,
                settings.leader_election_retry_period,
            )
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}LEADER_ELECTION_*: {exc}") from exc
        for name in ("resync_seconds", "error_backoff_seconds", "error_backoff_max_seconds"):
            if getattr(settings, name) <= 0:
                raise SettingsError(
                    f"{PREFIX}{name.upper()}={getattr(settings, name)!r}: must be above 0 "
                    "(0 would re-run every reconcile in a busy loop)"
                )
        for name in ("max_nodeclaims_per_workspace", "max_concurrent_reconciles"):
            if getattr(settings, name) < 1:
                raise SettingsError(
                    f"{PREFIX}{name.upper()}={getattr(settings, name)}: use 1 or more"
                )
        for name in ("max_nodeclaims_total", "node_ready_timeout_seconds"):
            if getattr(settings, name) < 0:
                raise SettingsError(
                    f"{PREFIX}{name.upper()}={getattr(settings, name)}: use 0 (no limit) or more"
                )
        try:
            parse_tolerations(settings.workload_tolerations)
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}WORKLOAD_TOLERATIONS: {exc}") from exc
        for entry in settings.plain_http_registries.split(","):
            entry = entry.strip()
            if entry and ("/" in entry or " " in entry):
                raise SettingsError(
                    f"{PREFIX}PLAIN_HTTP_REGISTRIES: {entry!r} is not host or host:port "
                    "(no scheme, no path)"
                )
        if settings.cloud_provider not in ("azure", "aws", "arc"):
            raise SettingsError(
                f"{PREFIX}CLOUD_PROVIDER={settings.cloud_provider!r}: use azure, aws or arc"
            )
        if "://" in settings.preset_registry or " " in settings.preset_registry:
            raise SettingsError(
                f"{PREFIX}PRESET_REGISTRY={settings.preset_registry!r}: give a registry host "
                "and optional path without a scheme, e.g. registry.internal.example/kaito"
            )
        return settings

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for every setting, for docs and `--help`."""
        return [
            (PREFIX + f.name.upper(), repr(f.default), str(f.metadata.get("doc", "")))
            for f in fields(cls)
        ]
