"""`kaito run -f workspace.yaml`: run the operator's Workspace on this machine (local mode)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console

VOLUME_HELP = "Map a volume (claim name, data source name or ConfigMap) to a directory: NAME=PATH."


def _volumes(entries: list[str]) -> dict[str, Path]:
    volumes = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"{entry!r}: use NAME=PATH", param_hint="--volume")
        volumes[name] = Path(path).expanduser()
    return volumes


def load_workspace_file(path: Path) -> dict[str, Any]:
    """Read one Workspace document; errors name the file and say what is wrong."""
    from kaito.local import LocalModeError

    if not path.is_file():
        raise LocalModeError(f"{path}: no such file")
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise LocalModeError(f"{path}: not valid YAML ({exc})") from exc
    workspaces = [d for d in documents if isinstance(d, dict) and d.get("kind") == "Workspace"]
    if len(workspaces) != 1:
        raise LocalModeError(f"{path}: expected exactly one Workspace, found {len(workspaces)}")
    return workspaces[0]


def config_file_for(
    body: dict[str, Any], workspace_file: Path, explicit: Path | None
) -> Path | None:
    """What stands in for the ConfigMap: --config, else `<config name>.yaml` beside the file."""
    if explicit is not None:
        return explicit
    section = body.get("tuning") or body.get("inference") or {}
    name = section.get("config") if isinstance(section, dict) else None
    if not name:
        return None
    sibling = workspace_file.parent / f"{name}.yaml"
    return sibling if sibling.is_file() else None


def run(
    file: Path = typer.Option(..., "--file", "-f", help="Workspace YAML (the operator's format)."),
    volume: list[str] = typer.Option([], "--volume", "-v", help=VOLUME_HELP),
    config: Path | None = typer.Option(
        None, "--config", help="File standing in for the ConfigMap named by `config`."
    ),
    model_dir: Path | None = typer.Option(None, help="Use these weights instead of the preset's."),
    port: int = typer.Option(5000, help="Inference: port to serve on."),
    host: str = typer.Option("127.0.0.1", help="Inference: address to bind."),
    max_steps: int | None = typer.Option(None, help="Tuning: stop after this many steps."),
    docker_config: Path | None = typer.Option(
        None, help="Docker config JSON with registry credentials (push and pull)."
    ),
    allow_lora_fallback: bool = typer.Option(
        False, help="Tuning: train plain LoRA when QLoRA is asked for and no GPU exists."
    ),
) -> None:
    """Tune or serve a Workspace here, validated by the same rules as the operator's webhook."""
    from kaito.local import LocalModeError, ServePlan, plan_workspace
    from kaito.local.run import measure_host, run_tuning_plan

    console = Console(stderr=True)
    try:
        body = load_workspace_file(file)
        plan = plan_workspace(
            body,
            host=measure_host(),
            volumes=_volumes(volume),
            config_file=config_file_for(body, file, config),
        )
        if isinstance(plan, ServePlan):
            serve_plan(
                plan,
                console,
                model_dir=model_dir,
                host=host,
                port=port,
                docker_config=docker_config,
            )
            return
        summary = run_tuning_plan(
            plan,
            console=console,
            model_dir=model_dir,
            training_overrides={"max_steps": max_steps},
            docker_config=docker_config,
            allow_lora_fallback=allow_lora_fallback,
        )
    except LocalModeError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print("[bold green]tuning finished[/bold green]")
    for line in summary.lines():
        console.print(f"  {line}", soft_wrap=True)


def serve_plan(
    plan: Any,
    console: Console,
    *,
    model_dir: Path | None,
    host: str,
    port: int,
    docker_config: Path | None,
) -> None:
    """Start the inference server in the foreground until Ctrl-C or SIGTERM."""
    from kaito.local.run import (
        model_source,
        prepare_adapters,
        server_args,
        serving_engine,
        strength_environment,
    )
    from kaito.runtime.inference.config import parse_args
    from kaito.runtime.inference.server import start_server

    engine = serving_engine(plan, model_dir)
    # Adapters before the model: a bad adapter reference fails in the seconds its pull takes,
    # not after the model's conversion.
    weights_of = model_source(plan.preset, model_dir, engine)
    adapters = prepare_adapters(plan, console, docker_config)
    weights = weights_of()
    with strength_environment(plan):
        config = parse_args(server_args(plan, weights, adapters, host, port, engine=engine))
        with console.status(f"loading {plan.preset.name}"):
            server = start_server(config)
    names = [plan.preset.served_name, *(a.name for a in plan.adapters)]
    console.print(f"[bold green]serving[/bold green] {', '.join(names)} at {server.url}")
    console.print(f"  try: kaito chat --url {server.url} --model {names[-1]} 'hello'")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
        console.print("stopped")
