"""`kaito autoscale -f set.yaml`: print the KEDA ScaledObject or HPA for an InferenceSet."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, cast

import typer
import yaml
from pydantic import ValidationError

from kaito.api.inferenceset import parse_inferenceset
from kaito.manifests.autoscaling import (
    DEFAULT_SCALE_DOWN_S,
    DEFAULT_TARGETS,
    AutoscalePolicy,
    Metric,
    horizontal_pod_autoscaler,
    scaled_object,
)


def autoscale(
    file: Annotated[str, typer.Option("-f", "--file", help="InferenceSet YAML ('-': stdin).")],
    with_: Annotated[
        str, typer.Option("--with", help="keda (ScaledObject) or hpa (HorizontalPodAutoscaler).")
    ] = "keda",
    min_replicas: Annotated[int, typer.Option("--min", help="Fewest replicas (KEDA: 0 ok).")] = 1,
    max_replicas: Annotated[int, typer.Option("--max", help="Most replicas.")] = 4,
    metric: Annotated[
        str,
        typer.Option(
            help="waiting (queued requests), running (requests in the batch), or cpu "
            "(HPA only: percent of the pods' CPU request, from metrics-server)."
        ),
    ] = "waiting",
    target: Annotated[
        float | None,
        typer.Option(help="Per-replica average to hold (default 4 requests, or 80 % for cpu)."),
    ] = None,
    scale_down_window: Annotated[
        int,
        typer.Option(
            "--scale-down-window",
            help="Seconds below target before replicas are removed (HPA scale-down "
            "stabilization, KEDA cooldownPeriod).",
        ),
    ] = DEFAULT_SCALE_DOWN_S,
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
    if metric not in DEFAULT_TARGETS:
        typer.echo("--metric is waiting, running or cpu", err=True)
        raise typer.Exit(2)
    policy = AutoscalePolicy(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        metric=cast(Metric, metric),
        target=DEFAULT_TARGETS[metric] if target is None else target,
        cooldown_s=scale_down_window,
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
