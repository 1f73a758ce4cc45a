"""`kaito autoscale -f set.yaml`: print the KEDA ScaledObject or HPA for an InferenceSet."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
import yaml
from pydantic import ValidationError

from kaito.api.inferenceset import parse_inferenceset
from kaito.manifests.autoscaling import AutoscalePolicy, horizontal_pod_autoscaler, scaled_object


def autoscale(
    file: Annotated[str, typer.Option("-f", "--file", help="InferenceSet YAML ('-': stdin).")],
    with_: Annotated[
        str, typer.Option("--with", help="keda (ScaledObject) or hpa (HorizontalPodAutoscaler).")
    ] = "keda",
    min_replicas: Annotated[int, typer.Option("--min", help="Fewest replicas (KEDA: 0 ok).")] = 1,
    max_replicas: Annotated[int, typer.Option("--max", help="Most replicas.")] = 4,
    metric: Annotated[
        str, typer.Option(help="waiting (queued requests) or running (requests in the batch).")
    ] = "waiting",
    target: Annotated[float, typer.Option(help="Per-replica average to hold.")] = 4.0,
    prometheus: Annotated[
        str | None, typer.Option(help="KEDA: Prometheus server URL scraping the servers.")
    ] = None,
    metrics_api: Annotated[
        str | None, typer.Option("--metrics-api", help="KEDA: metrics-api URL ({value}).")
    ] = None,
) -> None:
    """Print the autoscaler object; apply it with `kubectl apply -f -` (docs/operator.md)."""
    text = sys.stdin.read() if file == "-" else Path(file).read_text()
    try:
        iset = parse_inferenceset(yaml.safe_load(text))
    except ValidationError as exc:
        typer.echo(f"not an InferenceSet: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from exc
    if metric not in ("waiting", "running"):
        typer.echo("--metric is waiting or running", err=True)
        raise typer.Exit(2)
    chosen: Literal["waiting", "running"] = "waiting" if metric == "waiting" else "running"
    policy = AutoscalePolicy(
        min_replicas=min_replicas, max_replicas=max_replicas, metric=chosen, target=target
    )
    try:
        if with_ == "hpa":
            obj = horizontal_pod_autoscaler(iset, policy)
        elif with_ == "keda":
            if prometheus is None and metrics_api is None:
                raise ValueError("KEDA needs --prometheus URL or --metrics-api URL")
            obj = scaled_object(
                iset, policy, prometheus_url=prometheus, metrics_api_url=metrics_api
            )
        else:
            raise ValueError("--with is keda or hpa")
    except ValueError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from error
    typer.echo(yaml.safe_dump(obj, sort_keys=False), nl=False)
