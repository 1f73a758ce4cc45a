"""Inference server: batched transformers engine or vLLM, OpenAI API, legacy /chat, LoRA adapters.

Entry points: `start_server(ServerConfig(...))` in-process, `kaito serve` or
`python -m kaito.runtime.inference` as a process.
"""

from __future__ import annotations

from kaito.runtime.inference.config import ServerConfig, parse_args
from kaito.runtime.inference.server import RunningServer, serve, start_server

__all__ = ["RunningServer", "ServerConfig", "parse_args", "serve", "start_server"]
