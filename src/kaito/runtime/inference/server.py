"""Process entry points: serve in the foreground (pods) or start in a thread (local mode, tests)."""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn

from kaito.runtime.inference.config import ServerConfig, parse_args
from kaito.runtime.inference.router import build_app
from kaito.runtime.inference.serving import InferenceServing

log = logging.getLogger(__name__)
LOG_FORMAT = "%(levelname)s %(asctime)s %(filename)s:%(lineno)d] %(message)s"


@dataclass
class RunningServer:
    """A server started by `start_server`; `url` is its base address without a trailing slash."""

    url: str
    port: int
    serving: InferenceServing
    _server: uvicorn.Server
    _thread: threading.Thread

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Block until the model serves requests; raises if loading failed or took too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.serving.engine is not None:
                return
            if self.serving.load_error is not None:
                raise RuntimeError(f"model failed to load: {self.serving.load_error}")
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited")
            time.sleep(0.05)
        raise TimeoutError(f"the model was not ready within {timeout} s")

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self.serving.shutdown()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def start_server(
    config: ServerConfig,
    *,
    wait: bool = True,
    timeout: float = 600.0,
    preloaded: tuple[Any, Any] | None = None,
) -> RunningServer:
    """Start uvicorn in a daemon thread (port 0 picks a free port); optionally wait for the model.

    The socket is bound before the thread starts, so `url` is connectable on return.
    `preloaded` is a (model, tokenizer) pair already in memory, used instead of `config.model`.
    """
    serving = InferenceServing(config, preloaded=preloaded)
    app = build_app(serving)
    sock = _bind(config.host, config.port)
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=config.log_level, access_log=False, lifespan="on")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="kaito-http", daemon=True
    )
    thread.start()
    host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    host = f"[{host}]" if ":" in host else host
    running = RunningServer(f"http://{host}:{port}", port, serving, server, thread)
    if wait:
        running.wait_ready(timeout)
    return running


def serve(config: ServerConfig) -> int:
    """Run in the foreground until SIGINT/SIGTERM; returns the exit code."""
    logging.basicConfig(level=config.log_level.upper(), format=LOG_FORMAT, datefmt="%m-%d %H:%M:%S")
    if config.engine == "vllm":
        from kaito.runtime.inference.vllm import exec_vllm

        return exec_vllm(config)
    serving = InferenceServing(config)
    server: uvicorn.Server | None = None

    def stop_on_load_error() -> None:
        # A pod whose model cannot load should exit (and restart with its logs), as upstream.
        if server is not None:
            server.should_exit = True

    app = build_app(serving, on_load_error=stop_on_load_error)
    server = uvicorn.Server(
        uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level)
    )
    server.run()
    if serving.load_error is not None:
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return serve(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
