"""Batched engine vs one-request-at-a-time `generate()`: tokens/s and time to first token.

Runs, in one invocation on the same machine:
1. the kaito server as a subprocess, hit over HTTP (streaming /v1/completions) by 1, 4, 8 and
   16 concurrent clients with the same prompts and output length;
2. the baseline, `model.generate()` on each prompt in turn (greedy, fixed output length), before
   and after every client level; each level's ratio uses the two baselines around it.
Prints a markdown table of ratios against the baseline and writes JSON next to it.

    ~/.cache/kaito/venv/bin/python bench/inference/bench_engine.py [--max-tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kaito.runtime.openmp import configure_openmp

PROMPTS = [
    "The history of the city of Paris begins",
    "Here is a short story about a robot who learns to paint:",
    "The three most important ideas in physics are",
    "Write a letter to a friend about your summer holiday.",
    "A recipe for a simple tomato soup:",
    "Once upon a time in a small village by the sea,",
    "The main differences between cats and dogs are",
    "To learn a new language quickly, you should",
]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def load_baseline_model(model_dir: str, threads: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    return model, tokenizer


def baseline(model: Any, tokenizer: Any, max_tokens: int, requests: int) -> dict[str, Any]:
    import torch
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):  # type: ignore[misc]
        def __init__(self) -> None:
            self.calls = 0
            self.first: float | None = None

        def put(self, value: Any) -> None:
            self.calls += 1
            if self.calls == 2 and self.first is None:  # the first call carries the prompt
                self.first = time.perf_counter()

        def end(self) -> None:
            pass

    ttfts: list[float] = []
    tokens = 0
    with torch.inference_mode():
        inputs = tokenizer(PROMPTS[0], return_tensors="pt")
        model.generate(**inputs, max_new_tokens=2, do_sample=False)  # warm-up
        started = time.perf_counter()
        cpu_started = own_cpu_s()
        for i in range(requests):
            inputs = tokenizer(PROMPTS[i % len(PROMPTS)], return_tensors="pt")
            streamer = FirstToken()
            t0 = time.perf_counter()
            out = model.generate(
                **inputs,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                streamer=streamer,
            )
            ttfts.append((streamer.first or time.perf_counter()) - t0)
            tokens += out.shape[1] - inputs["input_ids"].shape[1]
        wall = time.perf_counter() - started
        cpu = own_cpu_s() - cpu_started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "requests": requests,
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "cpu_ms_per_token": 1000 * cpu / tokens,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "peak_rss_mib": peak_mib,
    }


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of another process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def one_request(client: Any, url: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": "bench",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first or time.perf_counter()) - started, tokens


async def load(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    import httpx

    counter = iter(range(requests))
    ttfts: list[float] = []
    total = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal total
        for i in counter:
            ttft, tokens = await one_request(client, url, PROMPTS[i % len(PROMPTS)], max_tokens)
            ttfts.append(ttft)
            total += tokens

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_request(client, url, PROMPTS[0], 2)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": requests,
        "tokens": total,
        "wall_s": wall,
        "tokens_per_s": total / wall,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
    }


def server_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(
    model_dir: str, threads: int, max_num_seqs: int
) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "kaito.runtime.inference",
        "--model",
        model_dir,
        "--served-model-name",
        "bench",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-threads",
        str(threads),
        "--max-num-seqs",
        str(max_num_seqs),
        "--adapter-dir",
        "",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited during startup")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise TimeoutError("the server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory; default: the small model")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--server-threads", type=int, help="the server's, if not --threads")
    parser.add_argument(
        "--dedicated-cpus",
        action="store_true",
        help="both sides as with KAITO_DEDICATED_CPUS=true (OpenMP workers spin briefly)",
    )
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--baseline-requests", type=int, default=6)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    if args.dedicated_cpus:
        os.environ["KAITO_DEDICATED_CPUS"] = "true"
    # Before torch loads; the server subprocess inherits the environment and decides alike.
    openmp = configure_openmp()
    if args.model is None:
        from kaito.runtime.small_model import small_model_path

        args.model = str(small_model_path())
    model, tokenizer = load_baseline_model(args.model, args.threads)
    process, url = start_server(args.model, args.server_threads or args.threads, args.max_num_seqs)
    rows = []
    # The machine is shared: the baseline runs before and after every server level, and each
    # level is compared with the mean of its two neighbours, so drifts in background load hit
    # both sides of a ratio alike. The idle server only waits on a socket meanwhile.
    baselines = [baseline(model, tokenizer, args.max_tokens, args.baseline_requests)]
    print(f"baseline: {baselines[-1]}", flush=True)
    try:
        for clients in (int(c) for c in args.clients.split(",")):
            requests = max(clients * args.requests_per_client, 2)
            server_cpu = process_cpu_s(process.pid)
            row = asyncio.run(load(url, clients, requests, args.max_tokens))
            # CPU per token does not depend on how much of the machine others take: on a shared
            # machine it is the steadier way to compare the two sides.
            server_cpu = process_cpu_s(process.pid) - server_cpu
            row["cpu_ms_per_token"] = 1000 * server_cpu / row["tokens"]
            baselines.append(baseline(model, tokenizer, args.max_tokens, args.baseline_requests))
            print(f"baseline: {baselines[-1]}", flush=True)
            around = (baselines[-2]["tokens_per_s"] + baselines[-1]["tokens_per_s"]) / 2
            ttft_around = (baselines[-2]["ttft_p50_s"] + baselines[-1]["ttft_p50_s"]) / 2
            cpu_around = (baselines[-2]["cpu_ms_per_token"] + baselines[-1]["cpu_ms_per_token"]) / 2
            row["cpu_per_token_ratio"] = row["cpu_ms_per_token"] / cpu_around
            row["baseline_tokens_per_s"] = around
            row["throughput_ratio"] = row["tokens_per_s"] / around
            row["ttft_p50_ratio"] = row["ttft_p50_s"] / ttft_around
            rows.append(row)
            print(row, flush=True)
        peak = server_peak_mib(process.pid)
    finally:
        process.terminate()
        process.wait(30)
    base = {
        key: sum(run[key] for run in baselines) / len(baselines)
        for key in ("tokens_per_s", "ttft_p50_s", "ttft_p95_s", "cpu_ms_per_token")
    }
    base["peak_rss_mib"] = baselines[-1]["peak_rss_mib"]
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "server_threads": args.server_threads or args.threads,
            "load_average": os.getloadavg(),
            "openmp": openmp,
        },
        "max_tokens": args.max_tokens,
        "baseline": base,
        "baseline_runs": baselines,
        "server": rows,
        "server_peak_rss_mib": peak,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print()
    print(
        f"baseline generate(): {base['tokens_per_s']:.1f} tok/s, "
        f"TTFT p50 {base['ttft_p50_s'] * 1000:.0f} ms, "
        f"{base['cpu_ms_per_token']:.0f} CPU ms/token, peak RSS {base['peak_rss_mib']:.0f} MiB"
    )
    print(
        "| clients | tok/s | baseline tok/s | x baseline | TTFT p50 ms | TTFT p95 ms "
        "| p50 x baseline | CPU ms/token | CPU x baseline |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['clients']} | {row['tokens_per_s']:.1f} | "
            f"{row['baseline_tokens_per_s']:.1f} | {row['throughput_ratio']:.2f} | "
            f"{row['ttft_p50_s'] * 1000:.0f} | {row['ttft_p95_s'] * 1000:.0f} | "
            f"{row['ttft_p50_ratio']:.2f} | {row['cpu_ms_per_token']:.1f} | "
            f"{row['cpu_per_token_ratio']:.2f} |"
        )
    print(f"server peak RSS: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
