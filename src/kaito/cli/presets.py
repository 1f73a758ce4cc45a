"""`kaito presets`: the model catalog (or the SKU table) with requirements, as a rich table."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from kaito.presets import Sku, default_catalog, default_skus
from kaito.presets.placement import place
from kaito.presets.validation import suggest_skus

# The instance type `kaito presets` places every preset on unless --sku names another.
DEFAULT_SKU = {"azure": "Standard_NC24ads_A100_v4", "aws": "p4d.24xlarge"}


def _presets_table(*, tunable: bool, show_all: bool, cloud: str, sku: Sku | None) -> Table:
    table = Table(title="kaito presets", title_justify="left")
    columns = ["Preset", "Model", "Weights", "Disk", "Context", "Runtimes", "Tuning", "Fits on"]
    if sku is not None:
        columns.append(f"On {sku.name}")
    for column in columns:
        table.add_column(column, no_wrap=column in ("Preset", "Fits on", columns[-1]))
    skus = default_skus()
    for preset in default_catalog():
        if (preset.deprecated and not show_all) or (tunable and not preset.supports_tuning):
            continue
        tuning = ", ".join(preset.tuning.methods) if preset.tuning else "-"
        if preset.cpu:
            fits = "CPU"
        else:
            fits = next(iter(suggest_skus(preset, skus, cloud, limit=1)), "multi-node")
        name = f"{preset.name} (deprecated)" if preset.deprecated else preset.name
        row = [
            name,
            preset.hf_id,
            f"{preset.weights_gib:g} GiB",
            preset.disk_size,
            f"{preset.context_length:,}",
            ", ".join(preset.runtimes),
            tuning,
            fits,
        ]
        if sku is not None:
            row.append(place(preset, sku, skus).summary)
        table.add_row(*row)
    return table


def _skus_table(cloud: str | None) -> Table:
    table = Table(title="GPU instance types", title_justify="left")
    for column in ("Instance type", "Cloud", "GPUs", "GPU memory", "GPU", "Status"):
        table.add_column(column, no_wrap=True)
    for sku in default_skus():
        if cloud is None or sku.cloud == cloud:
            table.add_row(
                sku.name,
                sku.cloud,
                str(sku.gpus),
                f"{sku.gpu_memory_gib:g} GiB",
                sku.gpu_model,
                sku.status,
            )
    return table


def presets(
    tunable: bool = typer.Option(False, "--tunable", help="Only presets that can be fine-tuned."),
    show_all: bool = typer.Option(False, "--all", help="Include deprecated presets."),
    skus: bool = typer.Option(False, "--skus", help="List GPU instance types instead."),
    cloud: str = typer.Option("azure", help="Cloud for 'Fits on' and --skus: azure, aws, arc."),
    sku: str = typer.Option(
        "",
        "--sku",
        metavar="INSTANCE_TYPE",
        help="Show how each preset runs on this instance type: nodes and GPUs, or why it is "
        "refused (vLLM runs on one node). Default: a common single-A100 type of the cloud.",
    ),
    weights_images: str = typer.Option(
        "",
        "--weights-images",
        metavar="REGISTRY",
        help="Print `preset hf-id revision image` per preset, the image named in REGISTRY "
        "(the operator's presets.registry): the list a mirroring script works through.",
    ),
) -> None:
    """List model presets with GPU memory, disk, context, runtimes and tuning support."""
    if weights_images:
        # Plain lines rather than a table, so a shell loop can read them.
        for preset in default_catalog():
            if (preset.deprecated and not show_all) or (tunable and not preset.supports_tuning):
                continue
            image = preset.weights_image_in(weights_images)
            typer.echo(f"{preset.name} {preset.hf_id} {preset.revision or '-'} {image}")
        return
    console = Console(width=max(Console().width, 230))
    if skus:
        console.print(_skus_table(cloud))
        return
    chosen = None
    name = sku or DEFAULT_SKU.get(cloud, "")
    if name:
        chosen = default_skus().get(name)
        if chosen is None:
            typer.echo(f"unknown instance type {name!r}: see `kaito presets --skus`", err=True)
            raise typer.Exit(2)
    console.print(_presets_table(tunable=tunable, show_all=show_all, cloud=cloud, sku=chosen))
