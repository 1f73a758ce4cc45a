"""Flags, the mounted YAML file and the vLLM argument mapping (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaito.runtime.inference.config import (
    ConfigError,
    parse_args,
    parse_leftover,
    resolve_chat_template,
)
from kaito.runtime.inference.vllm import build_vllm_argv, vllm_command


def test_defaults_follow_upstream_port_and_served_name() -> None:
    config = parse_args(["--model", "/models/Phi-4"], environ={})
    assert config.port == 5000
    assert config.model_name == "phi-4"
    assert config.engine == "transformers"
    assert config.api_key is None


def test_local_rank_shifts_the_port_and_env_supplies_the_api_key() -> None:
    config = parse_args([], environ={"LOCAL_RANK": "2", "KAITO_API_KEY": "k"})
    assert config.port == 5002
    assert config.api_key == "k"


def test_upstream_flag_spellings_are_accepted() -> None:
    config = parse_args(
        [
            "--pretrained_model_name_or_path",
            "/w",
            "--torch_dtype",
            "bfloat16",
            "--served_model_name",
            "m",
        ],
        environ={},
    )
    assert (config.model, config.dtype, config.model_name) == ("/w", "bfloat16", "m")


def test_the_config_file_wins_over_flags(tmp_path: Path) -> None:
    file = tmp_path / "inference_config.yaml"
    file.write_text("max-model-len: 1024\nmax_num_seqs: 4\nvllm:\n  cpu-offload-gb: 0\n")
    config = parse_args(["--config", str(file), "--max-model-len", "2048"], environ={})
    assert config.max_model_len == 1024
    assert config.max_num_seqs == 4
    assert config.vllm_file_args == {"cpu-offload-gb": 0}


def test_unknown_flags_follow_upstreams_pairing_rule() -> None:
    assert parse_leftover(
        ["--new_arg1", "value1", "--new_arg2", "--new_arg3", "value3", "--flag_arg"]
    ) == {
        "new_arg1": "value1",
        "new_arg2": True,
        "new_arg3": "value3",
        "flag_arg": True,
    }
    assert parse_leftover(["--a", "--b", "--c", "correct_value"]) == {
        "a": True,
        "b": True,
        "c": "correct_value",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dtype", "float77"], "Invalid torch dtype"),
        (["--max-num-seqs", "0"], "max-num-seqs"),
    ],
)
def test_invalid_settings_are_refused_with_the_flag_named(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_args(argv, environ={})


def test_an_unsupported_pipeline_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--pipeline", "summarization"], environ={})


def test_chat_templates_are_inline_text_or_files(tmp_path: Path) -> None:
    assert resolve_chat_template(None) is None
    assert resolve_chat_template("{{ messages }}\\n") == "{{ messages }}\n"
    file = tmp_path / "t.jinja"
    file.write_text("{{ x }}")
    assert resolve_chat_template(str(file)) == "{{ x }}"
    with pytest.raises(ConfigError):
        resolve_chat_template(str(tmp_path / "missing.jinja"))


def _adapter(root: Path, name: str, rank: int) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))


def test_vllm_gets_mapped_flags_adapters_extra_args_then_the_file(tmp_path: Path) -> None:
    _adapter(tmp_path, "mylora1", 8)
    _adapter(tmp_path, "mylora2", 64)
    file = tmp_path / "cfg.yaml"
    file.write_text("vllm:\n  max-model-len: 1024\n  enforce-eager: true\n")
    config = parse_args(
        [
            "--engine",
            "vllm",
            "--model",
            "/workspace/vllm/weights",
            "--served-model-name",
            "mymodel",
            "--max-model-len",
            "2048",
            "--adapter-dir",
            str(tmp_path),
            "--config",
            str(file),
            "--gpu-memory-utilization",
            "0.84",
        ],
        environ={},
    )
    argv = build_vllm_argv(config, environ={})
    assert argv[argv.index("--served-model-name") + 1] == "mymodel"
    assert argv[argv.index("--port") + 1] == "5000"
    assert "--enable-lora" in argv
    lora = argv.index("--lora-modules")
    assert argv[lora + 1 : lora + 3] == [
        f"mylora1={tmp_path / 'mylora1'}",
        f"mylora2={tmp_path / 'mylora2'}",
    ]
    assert argv[argv.index("--max-lora-rank") + 1] == "64"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.84"
    # The file's value comes last, so vLLM's parser keeps it (upstream: the file wins).
    positions = [i for i, a in enumerate(argv) if a == "--max-model-len"]
    assert [argv[i + 1] for i in positions] == ["2048", "1024"]
    assert argv[-1] == "--enforce-eager"
    assert vllm_command(config)[1:3] == ["-m", "vllm.entrypoints.launchers.api_server.entry"]


def test_vllm_without_adapters_does_not_enable_lora() -> None:
    config = parse_args(["--engine", "vllm", "--adapter-dir", "/nonexistent"], environ={})
    assert "--enable-lora" not in build_vllm_argv(config, environ={})


@pytest.mark.slow  # a fresh interpreter importing torch: tens of seconds on a busy machine
def test_the_server_process_exits_nonzero_when_the_model_cannot_load(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "kaito.runtime.inference", "--model", str(tmp_path / "none")]
    command += ["--host", "127.0.0.1", "--port", "0", "--adapter-dir", ""]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert finished.returncode == 1
    assert "model load failed" in finished.stderr


def test_adapter_strengths_come_from_flags_and_the_config_file(tmp_path: Path) -> None:
    file = tmp_path / "inference_config.yaml"
    file.write_text("adapter_strengths:\n  a: 0.5\n  b: 1\n")
    config = parse_args(
        ["--config", str(file), "--adapter-strength", "b=0.25", "--adapter-strength=c=0"],
        environ={},
    )
    assert config.adapter_strengths == {"a": 0.5, "b": 0.25, "c": 0.0}
    with pytest.raises(ConfigError, match="'d' has a strength that is not a number"):
        parse_args(["--adapter-strength", "d=strong"], environ={})
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_args(["--adapter-strength", "0.5"], environ={})


def test_the_api_key_file_wins_and_its_errors_never_quote_it(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("  from-the-secret\n")
    config = parse_args(["--api-key", "flag"], environ={"KAITO_API_KEY_FILE": str(key)})
    assert config.api_key == "from-the-secret"
    assert "from-the-secret" not in repr(config)
    assert parse_args([], environ={"KAITO_API_KEY": "env"}).api_key == "env"
    key.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        parse_args(["--api-key-file", str(key)], environ={})
    key.write_bytes(b"\xff\xfe secret bytes")
    with pytest.raises(ConfigError) as raised:
        parse_args(["--api-key-file", str(key)], environ={})
    assert "secret" not in str(raised.value).replace(str(key), "")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], 4 * 1024 * 1024), (["--max-body-bytes", "1024"], 1024)],
)
def test_the_body_limit_defaults_to_4_mib_and_has_a_floor(argv: list[str], expected: int) -> None:
    assert parse_args(argv, environ={}).max_body_bytes == expected
    with pytest.raises(ConfigError, match="max-body-bytes"):
        parse_args(["--max-body-bytes", "1023"], environ={})
