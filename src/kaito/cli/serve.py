"""`kaito serve`: run the inference server (same flags as `python -m kaito.runtime.inference`)."""

from __future__ import annotations

import typer


def serve(ctx: typer.Context) -> None:
    """Serve a model: OpenAI API, legacy /chat, LoRA adapters. `kaito serve --help` lists flags."""
    from kaito.runtime.openmp import configure_openmp

    configure_openmp()  # before torch loads
    from kaito.runtime.inference.server import main

    raise typer.Exit(main(ctx.args))


SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
