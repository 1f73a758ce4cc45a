"""Runs inside the pinned vLLM environment: checks vLLM server command lines the way vLLM does.

Reads a JSON list of cases ({"name", "module", "argv", "env"}) on stdin and prints one JSON
object {name: null | "step: error"} on stdout. For each command it does what vLLM's server
entry point does before any model is loaded: the module must exist, vLLM's own argument parser
must accept every flag and value, then the serve-argument checks (chat template file, tool and
reasoning parser names) and the engine arguments with every configuration that does not need
the model's files (parallel, cache, load, LoRA, structured outputs, observability). No server,
no model download: this file imports only vLLM and the standard library.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from typing import Any


def _check(case: dict[str, Any]) -> str | None:
    from vllm.config import CacheConfig, ParallelConfig
    from vllm.config.lora import LoRAConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.common.cli_args import (
        make_arg_parser,
        validate_api_server_args,
        validate_parsed_serve_args,
    )
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:
        found = importlib.util.find_spec(case["module"]) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return f"module: {case['module']} does not exist in this vLLM"
    saved = dict(os.environ)
    os.environ.update(case.get("env") or {})
    step = "parse"
    try:
        parser = make_arg_parser(FlexibleArgumentParser(prog=case["module"]))
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                args = parser.parse_args(case["argv"])
        except SystemExit:
            lines = [line for line in errors.getvalue().splitlines() if line.strip()]
            return f"parse: {lines[-1] if lines else 'rejected'}"
        step = "serve arguments"
        validate_parsed_serve_args(args)
        validate_api_server_args(args)
        step = "engine arguments"
        engine = AsyncEngineArgs.from_cli_args(args)
        step = "load config"
        engine.create_load_config()
        step = "structured outputs config"
        engine.create_structured_outputs_config()
        step = "observability config"
        engine.create_observability_config()
        step = "parallel config"
        ParallelConfig(
            tensor_parallel_size=engine.tensor_parallel_size,
            pipeline_parallel_size=engine.pipeline_parallel_size,
            data_parallel_size=engine.data_parallel_size,
            distributed_executor_backend=engine.distributed_executor_backend,
            nnodes=engine.nnodes,
            node_rank=engine.node_rank,
        )
        step = "cache config"
        CacheConfig(
            block_size=engine.block_size or CacheConfig.DEFAULT_BLOCK_SIZE,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            cache_dtype=engine.kv_cache_dtype,
        )
        if engine.enable_lora:
            step = "LoRA config"
            LoRAConfig(max_lora_rank=engine.max_lora_rank, max_loras=engine.max_loras)
    except Exception as exc:
        # pydantic puts the field and the rule on the lines after its summary line.
        detail = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        return f"{step}: {type(exc).__name__}: {detail}"[:500]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return None


class NetworkRefusedError(OSError):
    """The probe tried to reach beyond loopback (a check that would need the hub)."""


def _refuse_network() -> None:
    """Offline, like the test suite, but without vLLM's HF_HUB_OFFLINE path: with it set,
    EngineArgs swaps `--model` for a local snapshot, which a parser check does not have."""
    import socket

    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = False

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NetworkRefusedError(f"no network in the vLLM contract check: {args[:2]!r}")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.getaddrinfo = refuse
    socket.create_connection = refuse


def main() -> None:
    cases = json.load(sys.stdin)
    _refuse_network()
    results = {case["name"]: _check(case) for case in cases}
    import vllm

    print(json.dumps({"vllm": vllm.__version__, "results": results}))


if __name__ == "__main__":
    main()
