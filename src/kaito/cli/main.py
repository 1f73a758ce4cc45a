"""Entry point of the `kaito` command: one typer app, one sub-module per command group."""

from __future__ import annotations

import typer

from kaito import __version__
from kaito.cli import autoscale as autoscale_cli
from kaito.cli import demo, dev, serve
from kaito.cli import models as models_cli
from kaito.cli import operator as operator_cli
from kaito.cli import presets as presets_cli
from kaito.cli import tune as tune_cli
from kaito.cli import validate as validate_cli
from kaito.cli.chat import chat
from kaito.cli.run import run

app = typer.Typer(
    name="kaito",
    help="Run, tune and serve LLMs from one Workspace object: on Kubernetes or on this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the kaito version."""
    typer.echo(__version__)


app.command(name="demo")(demo.demo)
app.command(name="serve", context_settings=serve.SETTINGS)(serve.serve)
app.command(name="tune", context_settings=tune_cli.SETTINGS, add_help_option=False)(tune_cli.tune)
app.add_typer(dev.app, name="dev")
app.command(name="validate")(validate_cli.validate)
app.command(name="presets")(presets_cli.presets)
app.add_typer(operator_cli.app, name="operator")
app.add_typer(models_cli.app, name="models")
app.command(name="run")(run)
app.command(name="chat")(chat)
app.command(name="autoscale")(autoscale_cli.autoscale)

if __name__ == "__main__":
    app()
