"""Server settings: vLLM-style `--flags`, a mounted YAML config file, and `KAITO_*` env defaults."""

from __future__ import annotations

import argparse
import codecs
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from kaito.contract.files import ADAPTER_DIR, WEIGHTS_DIR
from kaito.contract.inference import InferenceConfigError, vllm_section
from kaito.runtime.chat_templates import resolve_template_path

DEFAULT_MODEL = WEIGHTS_DIR
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
API_KEY_ENV = "KAITO_API_KEY"
API_KEY_FILE_ENV = "KAITO_API_KEY_FILE"
DEFAULT_ADAPTER_DIR = ADAPTER_DIR
ENGINES = ("transformers", "llamacpp", "vllm")
PIPELINES = ("text-generation", "conversational")


class ConfigError(ValueError):
    """A flag or config-file entry is invalid; the message names it."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything one inference server process needs; built by `parse_args` or directly."""

    model: str = DEFAULT_MODEL  # local directory or Hugging Face repo id
    served_model_name: str | None = None  # None: lowercased last path segment of `model`
    host: str = "0.0.0.0"
    port: int = 5000  # upstream: 5000 + LOCAL_RANK
    engine: str = "transformers"  # "transformers" (batched, CPU or GPU) or "vllm" (GPU)
    dtype: str = "auto"  # "auto" or a torch dtype name such as bfloat16
    max_model_len: int | None = None  # tokens per sequence; None: the model's limit, capped
    chat_template: str | None = None  # file path or inline Jinja; None: the tokenizer's own
    adapter_dir: str | None = DEFAULT_ADAPTER_DIR  # every sub-directory is a LoRA adapter
    max_num_seqs: int = 16  # sequences decoded together per step
    max_queue_len: int = 256  # waiting requests before answering 429
    max_prefill_tokens: int = 4096  # padded prompt tokens per admission step
    default_max_tokens: int = 512  # completion budget when a request names none
    # Bearer token required on /v1/* and /chat; None: open. Resolved by `parse_args` from
    # --api-key-file / KAITO_API_KEY_FILE (a mounted Secret), KAITO_API_KEY, or --api-key.
    api_key: str | None = field(default=None, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # request bodies above this answer 413
    max_messages: int = 512  # chat messages per request (OpenAI and legacy /chat)
    # LoRA scale per adapter name, from the Workspace (--adapter-strength NAME=VALUE or the
    # config file's `adapter_strengths` mapping); a name not listed gets 1.0.
    adapter_strengths: Mapping[str, float] = field(default_factory=dict)
    num_threads: int | None = None  # torch intra-op threads; None: all visible cores
    weight_packing: bool = True  # fp32/bf16 on CPU: oneDNN-prepacked linear weights
    trust_remote_code: bool = False
    pipeline: str = "text-generation"  # legacy /chat mode: text-generation or conversational
    log_level: str = "info"
    # Unknown `--k v` flags: forwarded to vLLM, or to from_pretrained for transformers.
    extra_args: tuple[str, ...] = ()
    vllm_file_args: Mapping[str, Any] = field(default_factory=dict)  # the file's `vllm:` section
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Fields `parse_args` was given a value for (flags, the config file, env): an engine with
    # defaults of its own (vLLM) passes on only these, not kaito's CPU-engine defaults.
    explicit: frozenset[str] = frozenset()

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.model.rstrip("/")).name.lower()

    def with_overrides(self, **changes: Any) -> ServerConfig:
        return replace(self, **changes)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaito serve",
        description="Serve a causal LM with the OpenAI API and KAITO's legacy /chat endpoint.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--config", help="YAML file (the inference ConfigMap); its entries win over flags")
    add(
        "--model",
        "--pretrained_model_name_or_path",
        "--pretrained-model-name-or-path",
        help="model directory or Hugging Face id",
    )
    add("--served-model-name", "--served_model_name", help="model id clients use")
    add("--host")
    add("--port", type=int, help="default 5000 + LOCAL_RANK")
    add("--engine", choices=ENGINES, help="transformers, llamacpp (GGUF) or vllm (GPU)")
    add("--dtype", "--torch_dtype", "--torch-dtype")
    add("--max-model-len", "--max_model_len", type=int, help="tokens per sequence")
    add("--chat-template", "--chat_template", help="file path or inline Jinja")
    add(
        "--adapter-dir",
        "--kaito-adapters-dir",
        "--adapter_dir",
        dest="adapter_dir",
        help="LoRA adapters, one per sub-directory",
    )
    add("--max-num-seqs", "--max_num_seqs", type=int, help="batch size")
    add("--max-queue-len", "--max_queue_len", type=int, help="waiting requests before 429")
    add("--max-prefill-tokens", "--max_prefill_tokens", type=int)
    add("--default-max-tokens", "--default_max_tokens", type=int)
    add("--api-key", "--api_key", help="bearer token (visible in ps: prefer --api-key-file)")
    add(
        "--api-key-file",
        "--api_key_file",
        help=f"file holding the bearer token, e.g. a mounted Secret (or env {API_KEY_FILE_ENV})",
    )
    add("--max-body-bytes", "--max_body_bytes", type=int, help="larger request bodies get 413")
    add("--max-messages", "--max_messages", type=int, help="chat messages per request")
    add(
        "--adapter-strength",
        "--adapter_strength",
        dest="adapter_strength",
        action="append",
        metavar="NAME=VALUE",
        help="LoRA scale of one adapter (repeatable)",
    )
    add("--num-threads", "--num_threads", type=int)
    add(
        "--no-weight-packing",
        dest="weight_packing",
        action="store_false",
        default=None,
        help="keep MKL's dense linear layers on CPU (packing is ~1.5x faster batched)",
    )
    add("--trust-remote-code", "--trust_remote_code", action="store_true", default=None)
    add("--pipeline", choices=PIPELINES)
    add("--log-level", "--log_level")
    return parser


_FIELDS = {
    "model",
    "served_model_name",
    "host",
    "port",
    "engine",
    "dtype",
    "max_model_len",
    "chat_template",
    "adapter_dir",
    "max_num_seqs",
    "max_queue_len",
    "max_prefill_tokens",
    "default_max_tokens",
    "api_key",
    "max_body_bytes",
    "max_messages",
    "adapter_strengths",
    "num_threads",
    "weight_packing",
    "trust_remote_code",
    "pipeline",
    "log_level",
}
_FILE_ALIASES = {"pretrained_model_name_or_path": "model", "torch_dtype": "dtype"}


def _file_entries(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    try:
        vllm = vllm_section(data)
    except InferenceConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    entries: dict[str, Any] = {}
    for section in (data, data.get("transformers") or {}, data.get("kaito") or {}):
        if not isinstance(section, dict):
            raise ConfigError(f"config file {path}: sections must be mappings")
        for key, value in section.items():
            name = str(key).replace("-", "_")
            name = _FILE_ALIASES.get(name, name)
            if name in _FIELDS:
                entries[name] = value
    return entries, vllm


def parse_leftover(tokens: Sequence[str]) -> dict[str, Any]:
    """Upstream's rule for unknown flags: `--k v` gives k=v, a bare `--k` gives k=True."""
    result: dict[str, Any] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}")
        key = token.lstrip("-")
        if "=" in key:
            key, value = key.split("=", 1)
            result[key] = value
        elif index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
            result[key] = tokens[index + 1]
            index += 1
        else:
            result[key] = True
        index += 1
    return result


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Flags, then the config file on top (it wins, as upstream), then env fallbacks."""
    env = os.environ if environ is None else environ
    parser = _parser()
    namespace, leftover = parser.parse_known_args(list(argv) if argv is not None else None)
    values = {k: v for k, v in vars(namespace).items() if k in _FIELDS and v is not None}
    vllm_file: dict[str, Any] = {}
    if namespace.config:
        file_values, vllm_file = _file_entries(namespace.config)
        values.update(file_values)
    key_file = namespace.api_key_file or env.get(API_KEY_FILE_ENV)
    if key_file:
        values["api_key"] = read_api_key(key_file)
    elif "api_key" not in values and env.get(API_KEY_ENV):
        values["api_key"] = env[API_KEY_ENV]
    strengths = _strengths(values.get("adapter_strengths") or {}, "adapter_strengths")
    strengths.update(_strengths(namespace.adapter_strength or [], "--adapter-strength"))
    values["adapter_strengths"] = strengths
    if "port" not in values:
        values["port"] = 5000 + int(env.get("LOCAL_RANK", "0") or 0)
    if env.get("DEBUG_MODE", "").lower() == "true" and "log_level" not in values:
        values["log_level"] = "debug"
    config = ServerConfig(
        **values,
        explicit=frozenset(values),
        extra_args=tuple(leftover),
        vllm_file_args=vllm_file,
        load_kwargs=parse_leftover(leftover) if values.get("engine") != "vllm" else {},
    )
    return validate(config)


def read_api_key(path: str) -> str:
    """The key in a file (a mounted Secret); errors name the file, never its content."""
    try:
        key = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--api-key-file {path}: cannot read it ({type(exc).__name__})") from exc
    if not key:
        raise ConfigError(f"--api-key-file {path} is empty")
    return key


def _strengths(raw: object, where: str) -> dict[str, float]:
    """`NAME=VALUE` items or a mapping as {name: float}; errors name the adapter."""
    pairs: list[tuple[str, object]] = []
    if isinstance(raw, Mapping):
        pairs = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list):
        for item in raw:
            name, sep, text = str(item).partition("=")
            if not sep or not name:
                raise ConfigError(f"{where}: expected NAME=VALUE, got {item!r}")
            pairs.append((name, text))
    else:
        raise ConfigError(f"{where}: expected a mapping of adapter name to strength")
    result: dict[str, float] = {}
    for name, value in pairs:
        try:
            result[name] = float(str(value))
        except ValueError:
            raise ConfigError(
                f"{where}: adapter {name!r} has a strength that is not a number"
            ) from None
    return result


def validate(config: ServerConfig) -> ServerConfig:
    if config.engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {ENGINES}, got {config.engine!r}")
    if config.pipeline not in PIPELINES:
        raise ConfigError(f"Unsupported pipeline: {config.pipeline}")
    for name in (
        "max_num_seqs",
        "max_queue_len",
        "max_prefill_tokens",
        "default_max_tokens",
        "max_messages",
    ):
        if int(getattr(config, name)) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if config.max_body_bytes < 1024:
        raise ConfigError("--max-body-bytes must be at least 1024")
    if config.max_model_len is not None and config.max_model_len < 2:
        raise ConfigError("--max-model-len must be at least 2")
    if config.dtype != "auto":
        import torch

        if not isinstance(getattr(torch, config.dtype, None), torch.dtype):
            raise ConfigError(f"Invalid torch dtype: {config.dtype}")
    return config


def resolve_chat_template(value: str | None) -> str | None:
    """Upstream's rule: text with `{` or a newline is an inline template, else a file path."""
    if value is None:
        return None
    if "{" in value or "\n" in value:
        return codecs.decode(value, "unicode_escape")
    path = Path(resolve_template_path(value))
    if not path.is_file():
        raise ConfigError(f"--chat-template {value!r} is neither a file nor an inline template")
    return path.read_text()
