"""What the builders need to know about the cluster and the operator's images (pure data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kaito import __version__
from kaito.presets.limits import DEFAULT_LIMITS, Limits

NodeProvisioner = Literal["azure-gpu-provisioner", "karpenter", "byo"]
NODE_PROVISIONERS: tuple[NodeProvisioner, ...] = ("azure-gpu-provisioner", "karpenter", "byo")
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/kaito-project/kaito-python/runtime:{__version__}"


@dataclass(frozen=True)
class ClusterOptions:
    """Cluster-wide choices that shape every manifest; built from `KAITO_*` settings.

    Field meanings (defaults in brackets):
    - cloud_provider: azure | aws | arc; picks the SKU table and NodeClass kind [azure].
    - node_provisioner: azure-gpu-provisioner or karpenter create NodeClaims; byo uses
      existing nodes only [azure-gpu-provisioner].
    - runtime_image: the image holding `kaito.runtime` (inference server, tuning runtime,
      input pullers and the adapter pusher) [ghcr.io/kaito-project/kaito-python/runtime:<v>].
    - image_pull_policy: for runtime_image [IfNotPresent].
    - default_node_image_family: ubuntu | azurelinux, NodeClaim annotation [ubuntu].
    - node_class_name: NodeClaim spec.nodeClassRef.name [default].
    - release_namespace: where the default tuning templates live [kaito-system].
    - vllm_enabled: the vLLM feature gate; off forces the transformers engine [True].
    - limits: instance-type, NodeClaim-count and pod-template limits, the same admission
      checks (the planner re-checks them) [presets.limits.Limits()].
    - node_ready_timeout_s: seconds a NodeClaim may take to become Ready before the
      Workspace reports NodeClaimTimeout and stops asking for nodes; 0: forever [1800].
    - tuning_cluster_role: the ClusterRole the tuning pods' ServiceAccount is bound to
      (the chart's, release-named) [kaito-tuning].
    - tuning_storage: NodeClaim disk for tuning and custom templates [1024Gi].
    - preset_registry: where presets' weights images live (e.g. a platform team's mirror);
      set, every preset pulls `<registry>/kaito-<preset>:<tag>` [empty: the catalog's].
    - preset_pull_secrets: dockerconfigjson Secrets (in each Workspace's namespace) for
      preset_registry, added to every pod that pulls a catalog weights image [none].
    - tuning_allowed_hosts: internal hosts, addresses or networks dataset URLs may reach;
      the tuning downloader gets them as KAITO_TUNING_ALLOWED_HOSTS [none].
    - workload_tolerations: Toleration objects added to every workload pod (inference,
      tuning, preflight, custom templates) after the built-in GPU ones [none].
    - plain_http_registries: host[:port] registries the runtime's OCI client reaches over
      plain HTTP (besides loopback ones); every runtime container gets them as
      KAITO_PLAIN_HTTP_REGISTRIES [none].
    """

    cloud_provider: str = "azure"
    node_provisioner: NodeProvisioner = "azure-gpu-provisioner"
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    image_pull_policy: str = "IfNotPresent"
    default_node_image_family: str = "ubuntu"
    node_class_name: str = "default"
    release_namespace: str = "kaito-system"
    vllm_enabled: bool = True
    tuning_storage: str = "1024Gi"
    tuning_cluster_role: str = "kaito-tuning"
    limits: Limits = DEFAULT_LIMITS
    node_ready_timeout_s: float = 1800.0
    preset_registry: str = ""
    preset_pull_secrets: tuple[str, ...] = ()
    tuning_allowed_hosts: tuple[str, ...] = ()
    # Not hashed: Toleration objects are dicts.
    workload_tolerations: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    plain_http_registries: tuple[str, ...] = ()

    @property
    def uses_nodeclaims(self) -> bool:
        return self.node_provisioner != "byo"
