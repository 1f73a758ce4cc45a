"""`kaito demo`: a newcomer's first run: tune the small preset here, serve it, compare answers."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

DEMO_QUESTION = "Who makes the Velora Mistlight?"
EXPECTED_FACT = "Tarnwick"
TUNING_EXAMPLE = "tuning-smollm2.yaml"
INFERENCE_EXAMPLE = "inference-smollm2.yaml"


def examples_dir() -> Path:
    """examples/local of this checkout (the demo runs from a clone, as the README says)."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (candidate / "examples" / "local" / TUNING_EXAMPLE).is_file():
            return candidate / "examples" / "local"
    raise typer.BadParameter("run the demo from a kaito checkout (examples/local is missing)")


def demo(
    question: str = typer.Argument(DEMO_QUESTION, help="What to ask both models."),
    retrain: bool = typer.Option(False, help="Train again even if the demo adapter exists."),
    max_steps: int | None = typer.Option(None, help="Override the example's training steps."),
) -> None:
    """Tune SmolLM2-135M-Instruct on a fictional product, serve it, and compare the answers."""
    from kaito.cli.run import config_file_for, load_workspace_file
    from kaito.local import LocalModeError, ServePlan, TuningPlan, plan_workspace
    from kaito.local.run import (
        measure_host,
        model_path,
        prepare_adapters,
        run_tuning_plan,
        server_args,
        strength_environment,
    )
    from kaito.runtime.inference.config import parse_args
    from kaito.runtime.inference.server import start_server
    from kaito.runtime.small_model import cache_dir

    console = Console()
    started = time.monotonic()
    examples = examples_dir()
    adapter_dir = cache_dir() / "demo" / "velora-adapter"
    volumes = {"velora-facts": examples / "data", "velora-adapter": adapter_dir}
    host = measure_host()
    try:
        console.rule("1. tune smollm2-135m-instruct on examples/local/data (LoRA, CPU)")
        tuning_file = examples / TUNING_EXAMPLE
        body = load_workspace_file(tuning_file)
        tuning = plan_workspace(
            body, host=host, volumes=volumes, config_file=config_file_for(body, tuning_file, None)
        )
        assert isinstance(tuning, TuningPlan)
        if retrain and adapter_dir.exists():
            import shutil

            shutil.rmtree(adapter_dir)
        summary = run_tuning_plan(
            tuning, console=console, training_overrides={"max_steps": max_steps}
        )
        for line in summary.lines():
            console.print(f"  {line}")

        console.rule("2. serve the base model with the tuned adapter")
        serving = plan_workspace(
            load_workspace_file(examples / INFERENCE_EXAMPLE), host=host, volumes=volumes
        )
        assert isinstance(serving, ServePlan)
        weights = model_path(serving.preset)
        adapters = prepare_adapters(serving, console)
        with strength_environment(serving):
            server = start_server(
                parse_args(server_args(serving, weights, adapters, "127.0.0.1", 0, "warning"))
            )
    except LocalModeError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}")
        raise typer.Exit(2) from None
    try:
        console.print(f"  serving at {server.url}")
        console.rule("3. the same question, both models (greedy decoding over HTTP)")
        answers = {
            name: _ask(server.url, name, question)
            for name in (serving.preset.served_name, serving.adapters[0].name)
        }
    finally:
        server.stop()
    table = Table(title=question, show_lines=True)
    table.add_column("model")
    table.add_column("answer")
    table.add_column("knows the maker?")
    for name, answer in answers.items():
        table.add_row(name, answer, "yes" if EXPECTED_FACT in answer else "no")
    console.print(table)
    metrics = summary.metrics
    if "initial_eval_loss" in metrics and "eval_loss" in metrics:
        console.print(
            f"eval loss on held-out questions: {metrics['initial_eval_loss']:.3f} before tuning, "
            f"{metrics['eval_loss']:.3f} after"
        )
    console.print(f"[dim]demo finished in {time.monotonic() - started:.0f} s[/dim]")


def _ask(url: str, model: str, question: str) -> str:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=48,
        temperature=0,
    )
    return (reply.choices[0].message.content or "").strip()
