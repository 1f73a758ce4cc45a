"""`kaito validate -f FILE`: offline admission with one line per error and a telling exit code."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from typer.testing import CliRunner

from kaito.cli.validate import validate

from .builders import (
    LEGACY_EXAMPLE,
    Body,
    adding,
    inference_workspace,
    make_workspace,
    tuning_workspace,
    without,
)

app = typer.Typer()
app.command()(validate)
app.command("noop")(lambda: None)  # a second command keeps typer in multi-command mode


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", *args])
    return result.exit_code, result.output


def write(tmp_path: Path, *docs: Body) -> str:
    path = tmp_path / "ws.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def test_the_legacy_example_is_valid() -> None:
    code, out = run("-f", str(LEGACY_EXAMPLE))
    assert code == 0, out
    assert "1 Workspace(s) valid" in out


def test_each_error_is_one_line_naming_file_workspace_and_field(tmp_path: Path) -> None:
    bad = without(adding(tuning_workspace(), "resource.count", 2), "tuning.output.imagePushSecret")
    code, out = run("-f", write(tmp_path, bad))
    assert code == 1
    lines = [line for line in out.splitlines() if "tune-phi-3" in line]
    assert any("resource.count" in line for line in lines)
    assert any("tuning.output.imagePushSecret" in line for line in lines)


def test_a_user_config_map_in_the_same_file_is_checked(tmp_path: Path) -> None:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "my-config", "namespace": "default"},
        "data": {
            "training_config.yaml": "training_config:\n"
            "  QuantizationConfig: {load_in_4bit: false}\n"
        },
    }
    body = make_workspace("tune-phi-3").tuning(method="qlora").tuning_config("my-config").obj()
    code, out = run("-f", write(tmp_path, config_map, body))
    assert code == 1 and "tuning.config" in out


def test_a_config_map_only_in_the_cluster_is_not_an_offline_error(tmp_path: Path) -> None:
    body = make_workspace("tune-phi-3").tuning().tuning_config("in-cluster-config").obj()
    assert run("-f", write(tmp_path, body))[0] == 0


def test_the_cloud_option_limits_the_sku_table(tmp_path: Path) -> None:
    body = inference_workspace(instance_type="g5.2xlarge")
    assert run("-f", write(tmp_path, body))[0] == 0
    code, out = run("-f", write(tmp_path, body), "--cloud", "azure")
    assert code == 1 and "resource.instanceType" in out


def test_a_file_without_workspaces_fails(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert run("-f", str(path))[0] == 1


def test_unreadable_yaml_exits_with_two(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("a: [b")
    assert run("-f", str(path))[0] == 2
