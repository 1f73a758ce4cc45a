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

    workdir = _workdir(name)
    if read_state(workdir) is not None:
        typer.echo(
            f"cluster {name!r} already running; `kaito dev cluster down --name {name}` first"
        )
        raise typer.Exit(1)
    plane = ControlPlane(workdir, detach=True)
    try:
        plane.start()
        client = plane.client()
        if nodeclaim_crd:
            install_nodeclaim_crd(client)
        for index in range(gpu_nodes):
            add_fake_gpu_node(
                client, f"gpu-node-{index}", gpus=gpus_per_node, instance_type=instance_type
            )
    except (BinariesMissingError, ControlPlaneError, TimeoutError, FileNotFoundError) as error:
        plane.stop()
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    except BaseException:
        plane.stop()
        raise
    typer.echo(f"cluster {name!r} ready at {plane.server} in {plane.startup_s:.1f} s")
    typer.echo(f"logs in {plane.log_dir}")
    typer.echo(f"export KUBECONFIG={plane.kubeconfig}")


@cluster_app.command()
def down(name: str = NAME_OPTION) -> None:
    """Stop the cluster and delete its data."""
    from kaito.devcluster import ControlPlane

    if ControlPlane.stop_workdir(_workdir(name)):
        typer.echo(f"cluster {name!r} stopped")
    else:
        typer.echo(f"cluster {name!r} is not running")


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
    typer.echo(f'export PATH="{kubectl_path().parent}:$PATH"')
