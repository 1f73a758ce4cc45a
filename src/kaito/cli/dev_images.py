"""`kaito dev images build`: the operator and runtime images, built without a Docker daemon."""

from __future__ import annotations

import json

import typer

app = typer.Typer(
    help="Build the operator and runtime images with buildah and push them to a dev registry.",
    no_args_is_help=True,
)


def helm_flags(operator: str, runtime: str) -> list[str]:
    """`helm install` flags that select the two images (chart keys image.* and runtime.*)."""
    flags = []
    for key, reference in (("image", operator), ("runtime", runtime)):
        repository, _, tag = reference.rpartition(":")
        flags += [f"--set {key}.repository={repository}", f"--set {key}.tag={tag}"]
    return flags


@app.command()
def build(
    registry: str | None = typer.Option(
        None,
        "--registry",
        envvar="KAITO_DEV_REGISTRY",
        help="host:port of a plain-HTTP registry; default: the dev cluster's, else the "
        "machine's dev registry (127.0.0.1:5001, started when not running).",
    ),
    name: str = typer.Option(
        "default", "--name", help="Dev cluster whose registry to use (without --registry)."
    ),
    only: list[str] = typer.Option(
        [], "--only", help="Build only this image (operator or runtime); repeatable."
    ),
    force: bool = typer.Option(False, help="Rebuild and push even when the tag is current."),
    as_json: bool = typer.Option(False, "--json", help="Print the references as JSON."),
) -> None:
    """Build (when inputs changed) and push both images; print their references."""
    from kaito.devcluster import kaito_home, read_state
    from kaito.devcluster.images import IMAGE_NAMES, ImageBuildError, build_images, dev_registry

    unknown = sorted(set(only) - set(IMAGE_NAMES))
    if unknown:
        typer.echo(f"unknown image {', '.join(unknown)}; choose from {IMAGE_NAMES}", err=True)
        raise typer.Exit(2)
    try:
        if registry is None:
            state = read_state(kaito_home() / "dev" / name) or {}
            registry = state.get("registry") or dev_registry()
        refs = build_images(
            str(registry),
            only=tuple(only) or IMAGE_NAMES,
            force=force,
            log=lambda message: typer.echo(message, err=True),
        )
    except ImageBuildError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    if as_json:
        typer.echo(json.dumps(refs.as_dict(), indent=2))
        return
    typer.echo(f"operator: {refs.operator}")
    typer.echo(f"runtime:  {refs.runtime}")
    typer.echo("helm: " + " ".join(helm_flags(refs.operator, refs.runtime)))


@app.command()
def registry(
    stop: bool = typer.Option(False, "--stop", help="Stop it (the pushed images stay)."),
) -> None:
    """Print (starting it when needed) the machine's dev registry, or stop it."""
    from kaito.devcluster.images import ImageBuildError, dev_registry, stop_dev_registry

    if stop:
        typer.echo("dev registry stopped" if stop_dev_registry() else "dev registry not running")
        return
    try:
        typer.echo(dev_registry())
    except ImageBuildError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error


@app.command()
def prune() -> None:
    """Free disk: delete the builder's layer cache (the next build starts cold)."""
    from kaito.devcluster.images import Builder, ImageBuildError

    try:
        Builder().prune()
    except ImageBuildError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    typer.echo("layer cache pruned")
