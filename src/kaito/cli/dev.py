"""`kaito dev cluster up|down|env`: a real control plane on this machine for developers."""

from __future__ import annotations

from pathlib import Path

import typer

from kaito.cli import dev_images

app = typer.Typer(help="Developer tools.", no_args_is_help=True)
cluster_app = typer.Typer(
    help="A local Kubernetes control plane (etcd, apiserver, controller-manager, scheduler, kwok).",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")
app.add_typer(dev_images.app, name="images")

NAME_OPTION = typer.Option(
    "default", "--name", help="Cluster name; state in $KAITO_HOME/dev/<name>."
)


def _workdir(name: str) -> Path:
    from kaito.devcluster import kaito_home

    return kaito_home() / "dev" / name


@cluster_app.command()
def up(
    name: str = NAME_OPTION,
    gpu_nodes: int = typer.Option(0, help="Fake GPU nodes to create (kwok-managed)."),
    gpus_per_node: int = typer.Option(1, help="nvidia.com/gpu capacity of each fake node."),
    instance_type: str = typer.Option(
        "Standard_NC24ads_A100_v4", help="node.kubernetes.io/instance-type of the fake nodes."
    ),
    nodeclaim_crd: bool = typer.Option(
        True, help="Install the Karpenter NodeClaim CRD (karpenter.sh/v1)."
    ),
    real_node: bool = typer.Option(
        False,
        "--real-node",
        help="Add one real CPU node (kubelet + containerd) that runs pods; needs root and "
        "tools/setup.d/50-real-node.sh. One per machine.",
    ),
    registry: bool = typer.Option(
        True,
        help="Use the machine's dev image registry (`kaito dev images registry`, plain HTTP "
        "on 127.0.0.1, started when not running): `kaito dev images build` pushes there and "
        "the real node pulls from it.",
    ),
    trust_registry: list[str] = typer.Option(
        [],
        "--trust-registry",
        help="host:port of a further plain-HTTP registry the real node may pull from (repeatable).",
    ),
) -> None:
    """Start a cluster in the background and print how to use it."""
    from kaito.devcluster import (
        BinariesMissingError,
        ControlPlane,
        ControlPlaneError,
        add_fake_gpu_node,
        install_nodeclaim_crd,
        read_state,
    )
    from kaito.devcluster.controlplane import LOOPBACK
    from kaito.devcluster.images import ImageBuildError, dev_registry
    from kaito.devcluster.realnode import (
        NODE_IP,
        NODE_LABEL,
        HostClaim,
        RealNode,
        RealNodeError,
        claim_host,
        release_host,
    )

    workdir = _workdir(name)
    if read_state(workdir) is not None:
        typer.echo(
            f"cluster {name!r} already running; `kaito dev cluster down --name {name}` first"
        )
        raise typer.Exit(1)
    claim: HostClaim | None = None
    if real_node:
        try:
            # Before the control plane: its apiserver listens on the node's bridge.
            claim = claim_host(workdir / "real-node", timeout_s=5)
        except RealNodeError as error:
            typer.echo(str(error), err=True)
            raise typer.Exit(1) from error
    plane = ControlPlane(
        workdir, detach=True, bind_address=NODE_IP if claim is not None else LOOPBACK
    )
    node: RealNode | None = None

    def undo() -> None:
        if node is not None:
            node.stop()
        plane.stop()
        if claim is not None:
            release_host(claim)

    try:
        plane.start()
        client = plane.client()
        if nodeclaim_crd:
            install_nodeclaim_crd(client)
        for index in range(gpu_nodes):
            add_fake_gpu_node(
                client, f"gpu-node-{index}", gpus=gpus_per_node, instance_type=instance_type
            )
        registry_host = pod_registry = None
        if registry:
            registry_host = dev_registry()
            plane.note(registry=registry_host)
        if claim is not None:
            node = RealNode(plane, workdir / "real-node", claim, detach=True)
            for host in [*([registry_host] if registry_host else []), *trust_registry]:
                node.trust_registry(host)
            node.start()
            if registry_host is not None:
                # The same storage on the bridge: pods (weights and adapter pullers) reach it.
                pod_registry = dev_registry(address=NODE_IP)
                plane.note(pod_registry=pod_registry)
    except (
        BinariesMissingError,
        ControlPlaneError,
        RealNodeError,
        ImageBuildError,
        TimeoutError,
        FileNotFoundError,
    ) as error:
        undo()
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    except BaseException:
        undo()
        raise
    if claim is not None:
        # The node's host process holds the machine's lock from now on.
        claim.release()
    typer.echo(f"cluster {name!r} ready at {plane.server} in {plane.startup_s:.1f} s")
    if registry_host is not None:
        typer.echo(f"image registry at {registry_host} (plain HTTP; `kaito dev images build`)")
    if node is not None:
        typer.echo(
            f"real node {node.name!r} Ready in {node.startup_s:.1f} s (label {NODE_LABEL}=true, "
            f"taint {NODE_LABEL}=true:NoSchedule); logs in {node.log_dir}"
        )
    if node is not None and pod_registry is not None:
        typer.echo(f"the same registry for pods at {pod_registry}; helm flags for workloads:")
        for flag in workload_flags(pod_registry):
            typer.echo(f"  {flag}")
    typer.echo(f"logs in {plane.log_dir}")
    typer.echo(f"export KUBECONFIG={plane.kubeconfig}")


def workload_flags(pod_registry: str) -> list[str]:
    """`helm install` flags that let kaito's workloads run on the real node: tolerate its
    taint, pull preset weights from the registry pods reach, over plain HTTP."""
    import json

    from kaito.devcluster.realnode import TOLERATION

    return [
        f"--set-json 'workloads.tolerations={json.dumps([TOLERATION], separators=(',', ':'))}'",
        f"--set presets.registry={pod_registry}",
        f"--set 'registries.plainHTTP={{{pod_registry}}}'",
    ]


@cluster_app.command()
def down(name: str = NAME_OPTION) -> None:
    """Stop the cluster and delete its data."""
    from kaito.devcluster import ControlPlane
    from kaito.devcluster.images import stop_dev_registry
    from kaito.devcluster.realnode import NODE_IP, stop_detached

    workdir = _workdir(name)
    # The bridge address goes with the node; the loopback registry and the storage stay.
    stop_dev_registry(address=NODE_IP)
    if ControlPlane.stop_workdir(workdir):
        typer.echo(f"cluster {name!r} stopped")
    else:
        typer.echo(f"cluster {name!r} is not running")
    # After the control plane: the node's bridge carries the apiserver's address.
    problems = stop_detached(owner=workdir / "real-node")
    if problems is None:
        return
    if problems:
        typer.echo(f"real node stopped; not undone: {'; '.join(problems)}", err=True)
        raise typer.Exit(1)
    typer.echo("real node stopped and every host change undone")


@cluster_app.command()
def env(name: str = NAME_OPTION) -> None:
    """Print shell exports for the running cluster: eval "$(kaito dev cluster env)"."""
    from kaito.devcluster import kubectl_path, read_state

    state = read_state(_workdir(name))
    if state is None:
        typer.echo(
            f"cluster {name!r} is not running; start it with `kaito dev cluster up`", err=True
        )
        raise typer.Exit(1)
    typer.echo(f"export KUBECONFIG={state['kubeconfig']}")
    from kaito.devcluster import kaito_home

    # kubectl from the venv, helm (tools/setup.d/30-helm.sh) from $KAITO_HOME/bin.
    paths = [str(kubectl_path().parent), str(kaito_home() / "bin")]
    typer.echo(f'export PATH="{":".join(paths)}:$PATH"')
