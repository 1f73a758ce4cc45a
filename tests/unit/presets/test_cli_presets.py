"""`kaito presets`: a table of presets with their requirements, and the SKU table."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from kaito.cli.presets import presets

app = typer.Typer()
app.command()(presets)
app.command("noop")(lambda: None)  # a second command keeps typer in multi-command mode


def run(*args: str) -> str:
    result = CliRunner().invoke(app, ["presets", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_table_lists_presets_with_requirements() -> None:
    out = run()
    assert "phi-3-mini-128k-instruct" in out and "7.12 GiB" in out and "87Gi" in out
    assert "smollm2-135m-instruct" in out and "CPU" in out
    assert "phi-2" not in out


def test_tunable_limits_the_list() -> None:
    out = run("--tunable")
    assert "phi-3-mini-128k-instruct" in out and "llama-3.1-8b-instruct" not in out


def test_all_shows_deprecated_presets() -> None:
    assert "phi-2 (deprecated)" in run("--all")


def test_skus_lists_instance_types_of_one_cloud() -> None:
    out = run("--skus", "--cloud", "aws")
    assert "p5.48xlarge" in out and "Standard_NC6s_v3" not in out


def test_weights_images_lists_each_preset_with_its_image_in_a_registry() -> None:
    lines = run("--weights-images", "registry.internal.example/kaito").splitlines()
    assert (
        "phi-3-mini-4k-instruct microsoft/Phi-3-mini-4k-instruct 0a67737cc96d "
        "registry.internal.example/kaito/kaito-phi-3-mini-4k-instruct:0.2.0"
    ) in lines
    assert all(len(line.split()) == 4 for line in lines)
    assert not any(line.startswith("phi-2 ") for line in lines)


def row_of(out: str, preset: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"│ {preset} "))


def test_each_preset_shows_how_it_runs_on_the_default_a100() -> None:
    out = run()
    assert "On Standard_NC24ads_A100_v4" in out
    assert "1 node, 1 GPU (vLLM)" in row_of(out, "phi-4-mini-instruct")
    assert "refused: 3 nodes, vLLM runs on 1 -> Standard_NC80adis_H100_v5" in row_of(
        out, "llama-3.3-70b-instruct"
    )


def test_sku_chooses_the_instance_type_the_presets_are_placed_on() -> None:
    out = run("--sku", "Standard_ND96asr_A100_v4")
    assert "1 node, 8 GPUs (vLLM, tensor parallel)" in row_of(out, "llama-3.3-70b-instruct")


def test_an_unknown_sku_is_an_error_naming_it() -> None:
    result = CliRunner().invoke(app, ["presets", "--sku", "Standard_Nope"])
    assert result.exit_code == 2 and "Standard_Nope" in result.output
