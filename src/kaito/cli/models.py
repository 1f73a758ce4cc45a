"""`kaito models`: package model weights as OCI artifacts, push, pull through the node cache."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

app = typer.Typer(
    help="Model weights as OCI artifacts: package, push, pull (cached), hub download.",
    no_args_is_help=True,
)

DOCKER_CONFIG = typer.Option(
    None, "--docker-config", help="Docker config JSON with registry credentials."
)
INSECURE = typer.Option(
    None, "--insecure/--secure", help="Plain HTTP (default: only for loopback registries)."
)


def _echo(line: str) -> None:
    typer.echo(line, err=True)


@app.command()
def package(
    source: Path | None = typer.Argument(
        None, help="Model directory (safetensors, config, tokenizer)."
    ),
    small_model: bool = typer.Option(
        False,
        "--small-model",
        help="Package the small CPU preset (smollm2-135m-instruct: safetensors and GGUF) "
        "instead of SOURCE.",
    ),
    image: str | None = typer.Option(None, "--image", help="Target reference, e.g. reg/m:tag."),
    preset: str | None = typer.Option(None, help="sh.kaito.model.name (default: dir name)."),
    revision: str | None = typer.Option(None, help="sh.kaito.model.revision, e.g. a commit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the manifest, push nothing."),
    docker_config: Path | None = DOCKER_CONFIG,
    insecure: bool | None = INSECURE,
) -> None:
    """Package SOURCE (or --small-model) as one layer per file and push it to --image
    (unchanged blobs skip)."""
    from kaito.runtime.oci.registry import RegistryError
    from kaito.runtime.oci.weights import WeightsError, package_weights, push_weights

    if (source is None) == (not small_model):
        _echo("error: give a model directory or --small-model (not both)")
        raise typer.Exit(2)
    if small_model:
        from kaito.runtime.small_model import SMALL_MODEL_NAME, SmallModelMissingError, package_dir

        try:
            source = package_dir()
        except SmallModelMissingError as exc:
            _echo(f"error: {exc}")
            raise typer.Exit(1) from exc
        preset = preset or SMALL_MODEL_NAME
    assert source is not None
    try:
        packaged = package_weights(source, model_name=preset, revision=revision)
        if dry_run or image is None:
            typer.echo(json.dumps(packaged.manifest_json(), indent=2))
            _echo(f"digest: {packaged.digest}")
            if image is None and not dry_run:
                _echo("no --image given: printed the manifest only")
            return
        pushed = push_weights(
            packaged, image, docker_config=docker_config, insecure=insecure, log=_echo
        )
    except (WeightsError, RegistryError) as exc:
        _echo(f"error: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(asdict(pushed)))


@app.command()
def pull(
    reference: str = typer.Argument(..., help="Weights image, e.g. reg/kaito-phi-4:0.2.0."),
    directory: Path = typer.Argument(..., help="Where the model files go."),
    cache_dir: Path | None = typer.Option(
        None, help="Node cache (default $KAITO_CACHE_DIR or ~/.cache/kaito)."
    ),
    workers: int = typer.Option(4, help="Parallel range downloads."),
    chunk_mib: int = typer.Option(32, help="Range size in MiB."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash cached blobs too."),
    copy: bool = typer.Option(False, "--copy", help="Copy from the cache instead of linking."),
    docker_config: Path | None = DOCKER_CONFIG,
    docker_config_dir: Path | None = typer.Option(
        None,
        "--docker-config-dir",
        help="Folder of Docker config JSONs (pull secrets): anonymous first, then each.",
    ),
    insecure: bool | None = INSECURE,
) -> None:
    """Pull REFERENCE into DIRECTORY; blobs already in the node cache are not downloaded."""
    from kaito.runtime.oci.registry import RegistryError
    from kaito.runtime.oci.weights import WeightsError, pull_weights

    configs: list[Path | None] = [docker_config]
    if docker_config_dir is not None and docker_config_dir.is_dir():
        configs += sorted(docker_config_dir.glob("*.json"))
    for index, config in enumerate(configs):
        try:
            pulled = pull_weights(
                reference,
                directory,
                cache_dir=cache_dir,
                docker_config=config,
                insecure=insecure,
                workers=workers,
                chunk_size=chunk_mib << 20,
                verify=verify,
                link=not copy,
                log=_echo,
            )
            break
        except (WeightsError, RegistryError) as exc:
            _echo(f"error: {exc}" + (f" (with {config})" if config else ""))
            if isinstance(exc, WeightsError) or index == len(configs) - 1:
                raise typer.Exit(1) from exc
    summary = asdict(pulled)
    summary["files"] = [str(path) for path in pulled.files]
    typer.echo(json.dumps(summary))


@app.command()
def download(
    repo: str = typer.Argument(..., help="Hub repository, e.g. microsoft/phi-4."),
    directory: Path = typer.Argument(..., help="Where the model files go."),
    revision: str = typer.Option("main", help="Branch, tag or commit (pin a commit)."),
    endpoint: str | None = typer.Option(None, help="Hub URL (default $HF_ENDPOINT or HF)."),
    files: list[str] | None = typer.Option(None, "--file", help="Only these files."),
) -> None:
    """Download REPO from a Hugging Face-style hub (token from $HF_TOKEN)."""
    from kaito.runtime.hub import HubError, download_from_hub

    try:
        done = download_from_hub(
            repo, directory, revision=revision, files=files, endpoint=endpoint, log=_echo
        )
    except HubError as exc:
        _echo(f"error: {exc}")
        raise typer.Exit(1) from exc
    typer.echo(
        json.dumps(
            {
                "repo": done.repo,
                "revision": done.revision,
                "files": [str(p) for p in done.files],
                "downloaded_bytes": done.downloaded_bytes,
            }
        )
    )
