"""vLLM engine: map kaito's server flags onto vLLM's OpenAI server and exec it (GPU nodes)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kaito.runtime.chat_templates import resolve_template_path
from kaito.runtime.inference.adapters import discover
from kaito.runtime.inference.config import ServerConfig

log = logging.getLogger(__name__)

# vLLM >= 0.2x: the launcher module behind `vllm serve` (the old
# vllm.entrypoints.openai.api_server re-exports it with a deprecation warning).
VLLM_MODULE = "vllm.entrypoints.launchers.api_server.entry"
# vLLM reads the server's API key from here; on the command line it would show in `ps`.
VLLM_API_KEY_ENV = "VLLM_API_KEY"
# vLLM refuses adapters above --max-lora-rank (default 16); raise it to fit what is mounted.
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _file_args(entries: Mapping[str, Any]) -> list[str]:
    """Upstream appends each `vllm:` entry as `--key value` after the CLI args, so the file wins."""
    args: list[str] = []
    for key, value in entries.items():
        flag = "--" + str(key).lstrip("-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, dict | list):
            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    return args


def build_vllm_argv(config: ServerConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """vLLM OpenAI-server arguments equivalent to `config`, then unknown flags, then the file."""
    env = os.environ if environ is None else environ
    argv = [
        "--model",
        config.model,
        "--served-model-name",
        config.model_name,
        "--host",
        config.host,
        "--port",
        str(config.port),
        "--dtype",
        config.dtype,
    ]
    # kaito's own default (16) suits the CPU engine; vLLM sizes its batch for the GPU itself
    # (256 on A100, 1024 on H100/H200), so only a value the user set is passed on.
    if "max_num_seqs" in config.explicit:
        argv += ["--max-num-seqs", str(config.max_num_seqs)]
    if config.max_model_len is not None:
        argv += ["--max-model-len", str(config.max_model_len)]
    if config.chat_template is not None:
        argv += ["--chat-template", resolve_template_path(config.chat_template)]
    if config.trust_remote_code:
        argv.append("--trust-remote-code")
    if config.log_level:
        argv += ["--uvicorn-log-level", config.log_level.lower()]
    adapters = discover(Path(config.adapter_dir)) if config.adapter_dir else []
    if adapters:
        argv += ["--enable-lora", "--lora-modules"]
        argv += [f"{spec.name}={spec.path}" for spec in adapters]
        rank = max(_adapter_rank(spec.path) for spec in adapters)
        if rank > VLLM_DEFAULT_MAX_LORA_RANK:
            fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
            argv += ["--max-lora-rank", str(fitting[0] if fitting else rank)]
        for spec in adapters:
            if spec.name in env and spec.strength != 1.0:
                log.warning("vLLM ignores adapter strength: %s=%s", spec.name, env[spec.name])
    return argv + list(config.extra_args) + _file_args(config.vllm_file_args)


def _adapter_rank(path: Path) -> int:
    try:
        data = json.loads((path / "adapter_config.json").read_text())
        ranks = [
            int(data.get("r", 8)),
            *(int(v) for v in (data.get("rank_pattern") or {}).values()),
        ]
        return max(ranks)
    except (OSError, ValueError, TypeError):
        return VLLM_DEFAULT_MAX_LORA_RANK


def vllm_command(config: ServerConfig) -> list[str]:
    return [sys.executable, "-m", VLLM_MODULE, *build_vllm_argv(config)]


def vllm_environment(
    config: ServerConfig, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment vLLM runs with: ours, plus the API key where vLLM looks for it."""
    env = dict(os.environ if environ is None else environ)
    if config.api_key is not None:
        env[VLLM_API_KEY_ENV] = config.api_key
    return env


def exec_vllm(config: ServerConfig) -> int:
    """Replace this process with vLLM's server (signals and exit codes then belong to vLLM)."""
    command = vllm_command(config)
    log.info("starting vLLM: %s", " ".join(command))
    os.execve(command[0], command, vllm_environment(config))
    return 0  # pragma: no cover - execve does not return
