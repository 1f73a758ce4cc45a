"""A NodeClaim provisioner for kwok clusters: fake GPU nodes with the SKU's capacity.

It plays the gpu-provisioner plus Karpenter core: for each NodeClaim it creates a kwok Node
(annotation kwok.x-k8s.io/node=fake) with the claim's labels and taints, the instance type's
GPUs and GPU-feature-discovery labels, then moves the claim through Launched, Registered,
Initialized and Ready with status.nodeName and status.providerID. Annotate a NodeClaim with
`kaito.sh/simulate-failure: "<Reason>: <message>"` to make its launch fail instead.

It also plays a volume provisioner for kaito's PVCs (the tuning results claim): a kwok cluster
has no storage class, so a pending claim gets a pre-bound hostPath PersistentVolume, deleted
again once the claim is gone (kwok pods never touch it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from lightkube import ApiError

from kaito.devcluster.nodes import fake_node, node_is_ready
from kaito.k8s.client import ALL_NAMESPACES, Kube, rfc3339
from kaito.k8s.resources import NodeClaim, resource_for
from kaito.manifests.keys import (
    LABEL_INSTANCE_TYPE,
    LABEL_MACHINE_TYPE,
    LABEL_NODEPOOL,
    LABEL_WORKSPACE,
)
from kaito.presets import default_skus
from kaito.reconcile.types import ObjectRef

ANNOTATION_FAILURE = "kaito.sh/simulate-failure"
ANNOTATION_CLAIM = "kaito.sh/simulated-nodeclaim"
ANNOTATION_VOLUME_CLAIM = "kaito.sh/simulated-volume-for"
log = logging.getLogger("kaito.provisioners.kwok")
NODE = resource_for("v1", "Node")
JSON = dict[str, Any]


def instance_type_of(claim: Mapping[str, Any]) -> str:
    for requirement in (claim.get("spec") or {}).get("requirements") or []:
        if requirement.get("key") == LABEL_INSTANCE_TYPE and requirement.get("values"):
            return str(requirement["values"][0])
    return ""


def node_for_claim(claim: Mapping[str, Any], cloud_provider: str = "azure") -> JSON:
    """The kwok Node a provisioner would bring up for this claim (pure)."""
    name = str(claim["metadata"]["name"])
    instance_type = instance_type_of(claim)
    sku = default_skus().resolve(instance_type, cloud_provider)
    labels = {
        **(claim["metadata"].get("labels") or {}),
        LABEL_NODEPOOL: "kaito",
        LABEL_MACHINE_TYPE: "gpu" if instance_type.lower().startswith("standard_n") else "cpu",
        "agentpool": name,
        "kubernetes.azure.com/agentpool": name,
        "accelerator": "nvidia",
    }
    per_gpu_mib = int(sku.gpu_memory_per_gpu_gib * 1024) if sku.known else 16384
    return fake_node(
        name,
        gpus=max(sku.gpus, 1),
        instance_type=instance_type or None,
        gpu_product=f"NVIDIA-{sku.gpu_model}" if sku.known else "NVIDIA-unknown",
        gpu_memory_mib=per_gpu_mib,
        labels=labels,
        annotations={ANNOTATION_CLAIM: name},
        taints=[dict(t) for t in (claim.get("spec") or {}).get("taints") or []],
    )


def claim_status(claim: Mapping[str, Any], *, node_ready: bool, failure: str | None = None) -> JSON:
    """The status a provisioner reports for the claim at this point of its life."""
    name = str(claim["metadata"]["name"])
    now = rfc3339()

    def cond(type_: str, ok: bool, reason: str, message: str = "") -> JSON:
        return {
            "type": type_,
            "status": "True" if ok else "False",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
        }

    if failure:
        reason, _, message = failure.partition(":")
        reason = reason.strip() or "LaunchFailed"
        message = message.strip() or failure
        return {
            "conditions": [
                cond("Launched", False, reason, message),
                cond("Ready", False, "NotLaunched", "Launched=False"),
            ]
        }
    waiting = "AwaitingReconciliation"
    return {
        "nodeName": name,
        "providerID": f"kwok://{name}",
        "conditions": [
            cond("Launched", True, "Launched"),
            cond("Registered", node_ready, "Registered" if node_ready else waiting),
            cond("Initialized", node_ready, "Initialized" if node_ready else waiting),
            cond("Ready", node_ready, "Ready" if node_ready else "NotInitialized"),
        ],
    }


def _same_conditions(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    def essence(status: Mapping[str, Any]) -> list[tuple[Any, Any, Any]]:
        return [
            (c.get("type"), c.get("status"), c.get("reason"))
            for c in status.get("conditions") or []
        ]

    return essence(old) == essence(new) and old.get("nodeName") == new.get("nodeName")


def volume_for_claim(claim: Mapping[str, Any]) -> JSON:
    """A hostPath PersistentVolume pre-bound to `claim` (claimRef), of the requested size."""
    meta, spec = claim["metadata"], claim.get("spec") or {}
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"kwok-{meta['uid']}",
            "annotations": {ANNOTATION_VOLUME_CLAIM: f"{meta['namespace']}/{meta['name']}"},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.get("storageClassName") or "",
            "hostPath": {"path": f"/tmp/kwok-volumes/{meta['uid']}"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


class NodeSimulator:
    """Watches NodeClaims and keeps one kwok Node per claim (create, ready, delete)."""

    def __init__(self, kube: Kube, *, cloud_provider: str = "azure", sweep_s: float = 10.0):
        self.kube = kube
        self.cloud_provider = cloud_provider
        self.sweep_s = sweep_s

    async def handle(self, claim: JSON) -> None:
        name = claim["metadata"]["name"]
        if claim["metadata"].get("deletionTimestamp"):
            await self.delete_node(name)
            return
        status = claim.get("status") or {}
        failure = (claim["metadata"].get("annotations") or {}).get(ANNOTATION_FAILURE)
        if failure:
            await self.write_status(claim, claim_status(claim, node_ready=False, failure=failure))
            return
        node = await self.kube.get(NODE, name)
        if node is None:
            node = await self.create_node(node_for_claim(claim, self.cloud_provider))
            log.info("created kwok node %s for NodeClaim %s", name, name)
        ready = node is not None and node_is_ready(node)
        new = claim_status(claim, node_ready=ready)
        if not _same_conditions(status, new):
            await self.write_status(claim, new)

    async def create_node(self, manifest: JSON) -> JSON | None:
        """Apply the Node, then its status (capacity), as a registering kubelet would."""
        name = manifest["metadata"]["name"]
        body = {k: v for k, v in manifest.items() if k != "status"}
        with contextlib.suppress(ApiError):
            await self.kube.server_side_apply(body)
            await self.kube.merge_status(NODE, name, manifest["status"])
        return await self.kube.get(NODE, name)

    async def write_status(self, claim: Mapping[str, Any], status: JSON) -> None:
        with contextlib.suppress(ApiError):
            await self.kube.merge_status(NodeClaim, claim["metadata"]["name"], status)

    async def delete_node(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            await self.kube.remove(ObjectRef("v1", "Node", name))

    async def sweep(self) -> None:
        """Level-based pass: every claim handled once, nodes of vanished claims deleted."""
        claims = await self.kube.list_json(NodeClaim)
        names = {c["metadata"]["name"] for c in claims}
        for claim in claims:
            await self.handle(claim)
        for node in await self.kube.list_json(NODE):
            owner = (node["metadata"].get("annotations") or {}).get(ANNOTATION_CLAIM)
            if owner and owner not in names:
                await self.delete_node(node["metadata"]["name"])
        await self.sweep_volumes()

    async def sweep_volumes(self) -> None:
        """Bind each pending kaito PVC to a new volume; delete volumes whose claim is gone."""
        claims = await self.kube.list_json(
            resource_for("v1", "PersistentVolumeClaim"),
            namespace=ALL_NAMESPACES,
            labels={LABEL_WORKSPACE: None},
        )
        for claim in claims:
            if (claim.get("status") or {}).get("phase") == "Pending" and not (
                claim.get("spec") or {}
            ).get("volumeName"):
                with contextlib.suppress(ApiError):  # already made: the binder is on it
                    await self.kube.create(volume_for_claim(claim))
        for volume in await self.kube.list_json(resource_for("v1", "PersistentVolume")):
            ours = ANNOTATION_VOLUME_CLAIM in (volume["metadata"].get("annotations") or {})
            if ours and (volume.get("status") or {}).get("phase") == "Released":
                with contextlib.suppress(ApiError):
                    name = volume["metadata"]["name"]
                    await self.kube.remove(ObjectRef("v1", "PersistentVolume", name))

    async def watch(self) -> None:
        async for op, claim in self.kube.watch_json(NodeClaim):
            if op == "DELETED":
                await self.delete_node(claim["metadata"]["name"])
            else:
                await self.handle(claim)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Sweep, then follow the watch; sweep again every `sweep_s` (nodes turn Ready)."""
        stop = stop or asyncio.Event()

        async def sweeper() -> None:
            while not stop.is_set():
                try:
                    await self.sweep()
                except ApiError as error:
                    log.warning("sweep failed: %s", error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.sweep_s)

        async def watcher() -> None:
            while not stop.is_set():
                try:
                    await self.watch()
                except Exception as error:  # the watch ends or breaks; start it again
                    log.debug("NodeClaim watch restarted: %s", error)
                    await asyncio.sleep(1.0)

        tasks = [asyncio.create_task(sweeper()), asyncio.create_task(watcher())]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def simulate(*, cloud_provider: str = "azure", sweep_s: float = 2.0) -> None:
    kube = Kube.from_env(field_manager="kaito-kwok-provisioner")
    try:
        await NodeSimulator(kube, cloud_provider=cloud_provider, sweep_s=sweep_s).run()
    finally:
        await kube.close()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(simulate())


if __name__ == "__main__":
    main()
