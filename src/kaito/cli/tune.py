"""`kaito tune`: fine-tune an adapter here; the flags are the tuning runtime's own."""

from __future__ import annotations

import typer


def tune(ctx: typer.Context) -> None:
    """Fine-tune with LoRA/QLoRA from a KAITO tuning config (`kaito tune --help` for flags)."""
    from kaito.runtime.tuning.cli import main

    raise typer.Exit(main(list(ctx.args), prog="kaito tune"))


SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
