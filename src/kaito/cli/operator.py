"""`kaito operator`: run the Workspace operator, the kwok node simulator, list settings."""

from __future__ import annotations

import asyncio
import logging

import typer

app = typer.Typer(
    help="The Workspace operator (kopf): reconcile Workspaces on a Kubernetes cluster.",
    no_args_is_help=True,
)


@app.command()
def run(
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR."),
    leader_elect: bool | None = typer.Option(
        None,
        "--leader-elect/--no-leader-elect",
        help="Reconcile only while holding the leader-election Lease (overrides "
        "KAITO_LEADER_ELECTION; off by default, on in the Helm chart).",
    ),
) -> None:
    """Run the operator against KUBECONFIG (or in-cluster); settings from KAITO_* variables."""
    import dataclasses

    from kaito.operator.main import run as run_operator
    from kaito.operator.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if leader_elect is not None:
        settings = dataclasses.replace(settings, leader_election=leader_elect)
    run_operator(settings, log_level=log_level)


@app.command("simulate-nodes")
def simulate_nodes(
    cloud_provider: str = typer.Option("azure", help="SKU table for GPU counts."),
    sweep_seconds: float = typer.Option(2.0, help="Seconds between full passes."),
) -> None:
    """Play the node provisioner on a kwok cluster: NodeClaims become fake GPU nodes."""
    from kaito.provisioners.kwok import simulate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(simulate(cloud_provider=cloud_provider, sweep_s=sweep_seconds))


@app.command()
def settings() -> None:
    """List every KAITO_* setting with its default and meaning."""
    from kaito.operator.settings import Settings

    for variable, default, doc in Settings.describe():
        typer.echo(f"{variable} (default {default})\n    {doc}")
