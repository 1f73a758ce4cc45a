"""Local mode end to end: the examples tune, then serve over HTTP; bad input fails cleanly."""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from kaito.cli.main import app
from kaito.cli.run import config_file_for, load_workspace_file
from kaito.local import ServePlan, plan_workspace
from kaito.local.run import measure_host, model_path, prepare_adapters, server_args
from kaito.runtime.inference.config import parse_args
from kaito.runtime.inference.server import start_server

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "local"
QUESTION = "Who makes the Velora Mistlight?"

runner = CliRunner()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def converted_model() -> Path:
    """The small model as safetensors, converted once in the session's cache (the runtime
    tests use the same one)."""
    from kaito.runtime.small_model import small_model_path

    return small_model_path()


@pytest.fixture
def local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converted_model: Path) -> Path:
    """A fresh KAITO_CACHE_DIR for local mode's work directories, holding a link to the
    converted model: converting the GGUF again cost 25 s per test here, and the conversion is
    tests/runtime/test_small_model.py's business."""
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / converted_model.name).symlink_to(converted_model, target_is_directory=True)
    monkeypatch.setenv("KAITO_CACHE_DIR", str(cache))
    return cache


def chat(url: str, model: str) -> str:
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 32,
            "temperature": 0,
        },
        timeout=120,
    )
    reply.raise_for_status()
    return str(reply.json()["choices"][0]["message"]["content"])


def run_tuning_example(adapter: Path, *flags: str) -> Any:
    """`kaito run -f tuning-smollm2.yaml` with the example's data and adapter volumes."""
    return runner.invoke(
        app,
        [
            "run",
            "-f",
            str(EXAMPLES / "tuning-smollm2.yaml"),
            "--volume",
            f"velora-facts={EXAMPLES / 'data'}",
            "--volume",
            f"velora-adapter={adapter}",
            *flags,
        ],
    )


def test_the_tuning_example_trains_an_adapter_that_the_inference_example_serves(
    tmp_path: Path, local_cache: Path
) -> None:
    adapter = tmp_path / "adapter"
    config = yaml.safe_load((EXAMPLES / "velora-tuning.yaml").read_text())
    steps = config["training_config"]["TrainingArguments"]["max_steps"]
    result = run_tuning_example(adapter)
    assert result.exit_code == 0, result.output
    assert "tuning finished" in result.output
    assert (adapter / "adapter_model.safetensors").is_file()
    metadata = json.loads((adapter / "tuning_metadata.json").read_text())
    assert metadata["metrics"]["global_step"] == steps

    # The serving half, as `kaito run -f inference-smollm2.yaml` does it, on a free port.
    inference_file = EXAMPLES / "inference-smollm2.yaml"
    body = load_workspace_file(inference_file)
    plan = plan_workspace(
        body,
        host=measure_host(),
        volumes={"velora-adapter": adapter},
        config_file=config_file_for(body, inference_file, None),
    )
    assert isinstance(plan, ServePlan)
    from rich.console import Console

    adapters = prepare_adapters(plan, Console())
    server = start_server(
        parse_args(server_args(plan, model_path(plan.preset), adapters, "127.0.0.1", 0))
    )
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=30).json()
        assert {m["id"] for m in models["data"]} >= {"smollm2-135m-instruct", "velora"}
        base = chat(server.url, "smollm2-135m-instruct")
        tuned = chat(server.url, "velora")
    finally:
        server.stop()
    assert "Tarnwick" in tuned
    assert "Tarnwick" not in base


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["-f", "no/such/workspace.yaml"], "no such file"),
        (
            ["-f", str(ROOT / "examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")],
            "needs an NVIDIA GPU",
        ),
    ],
)
def test_bad_input_ends_with_one_clear_line(arguments: list[str], expected: str) -> None:
    result = runner.invoke(app, ["run", *arguments])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert expected in lines[0]


def test_an_unknown_preset_names_the_field(tmp_path: Path) -> None:
    text = (EXAMPLES / "inference-smollm2.yaml").read_text()
    workspace = tmp_path / "ws.yaml"
    workspace.write_text(text.replace("name: smollm2-135m-instruct", "name: smollm-9000"))
    result = runner.invoke(app, ["run", "-f", str(workspace)])
    assert result.exit_code == 2
    assert "inference.preset.name" in result.output


def example_with(directory: Path, example: str, old: str, new: str) -> Path:
    """A copy of an example Workspace in `directory` with one passage replaced."""
    text = (EXAMPLES / example).read_text()
    assert old in text, f"{example} no longer has the passage this test replaces"
    path = directory / example
    path.write_text(text.replace(old, new))
    return path


@pytest.fixture
def model_resolutions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The small model's resolutions (conversions on first use) in this test, by function."""
    from kaito.runtime import small_model

    resolved: list[str] = []

    def recorded(name: str) -> Callable[[], Path]:
        real = getattr(small_model, name)

        def resolve() -> Path:
            resolved.append(name)
            return Path(real())

        return resolve

    for name in ("small_model_path", "gguf_path"):
        monkeypatch.setattr(small_model, name, recorded(name))
    return resolved


def test_an_unreachable_url_fails_and_leaves_no_adapter_behind(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    local_cache: Path,
    model_resolutions: list[str],
) -> None:
    from kaito.runtime.tuning import inputs

    # Every retry still happens; only the pauses between them (15.5 s in all) are shortened.
    monkeypatch.setattr(inputs, "fetch_urls", functools.partial(inputs.fetch_urls, backoff_s=0.01))
    url = f"http://127.0.0.1:{closed_port()}/facts.jsonl"
    workspace = example_with(
        tmp_path,
        "tuning-smollm2.yaml",
        "    name: velora-facts\n    volumeSource:\n      persistentVolumeClaim:\n"
        "        claimName: velora-facts\n",
        f"    urls:\n      - {url}\n",
    )
    (tmp_path / "velora-tuning.yaml").write_text((EXAMPLES / "velora-tuning.yaml").read_text())
    adapter = tmp_path / "adapter"
    result = runner.invoke(
        app, ["run", "-f", str(workspace), "--volume", f"velora-adapter={adapter}"]
    )
    assert result.exit_code == 2, result.output
    assert "tuning.input.urls" in result.output
    # The inputs come first: a bad URL fails before the model is converted or loaded.
    assert model_resolutions == []
    assert not (adapter / "fine_tuning_completed.txt").exists()


def test_an_adapter_image_that_cannot_be_pulled_fails_before_the_model_loads(
    tmp_path: Path, local_cache: Path, model_resolutions: list[str]
) -> None:
    image = f"127.0.0.1:{closed_port()}/velora-adapter:1"
    workspace = example_with(
        tmp_path,
        "inference-smollm2.yaml",
        "        volumeSource:\n          persistentVolumeClaim:\n"
        "            claimName: velora-adapter\n",
        f"        image: {image}\n",
    )
    result = runner.invoke(app, ["run", "-f", str(workspace), "--port", str(closed_port())])
    assert result.exit_code == 2, result.output
    assert "adapter velora: pull failed" in result.output
    assert model_resolutions == []


def test_max_steps_on_the_command_line_reaches_the_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_cache: Path
) -> None:
    """`kaito run --max-steps` overrides the example's config (the trainer itself is stood in
    for: the tuning test above runs it)."""
    from kaito.runtime.tuning import train
    from kaito.runtime.tuning.config import ConfigError, TuningConfig

    def stand_in(config: TuningConfig, *_: object, **__: object) -> None:
        raise ConfigError(f"stand-in trainer got max_steps={config.training['max_steps']}")

    monkeypatch.setattr(train, "run_tuning", stand_in)
    result = run_tuning_example(tmp_path / "adapter", "--max-steps", "3")
    assert result.exit_code == 2, result.output
    assert "stand-in trainer got max_steps=3" in result.output
