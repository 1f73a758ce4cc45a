"""Load test: many short requests from many concurrent clients; only 429s may fail; RSS stays flat.

    ~/.cache/kaito/venv/bin/python bench/inference/load_test.py [--requests 2000] [--clients 32]

Starts the server in this process (loopback, a free port) so that its resident memory is this
process's; prints status counts, throughput and RSS before and after the run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import time
from pathlib import Path
from typing import Any

from kaito.runtime.openmp import configure_openmp

configure_openmp()  # before torch loads, as the server's own entry point does


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_load(
    url: str, total: int, clients: int, max_tokens: int = 1, model: str = "load"
) -> dict[str, Any]:
    """Send `total` completion requests from `clients` concurrent workers; count statuses."""
    import httpx

    statuses: collections.Counter[str] = collections.Counter()
    remaining = iter(range(total))
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for i in remaining:
            # Two prompt tokens: the load is on the HTTP path, queueing and batching, not on
            # prefill compute (a chat template would add ~35 tokens of system prompt each).
            body = {
                "model": model,
                "prompt": [1 + i % 1000, 1 + (i * 7) % 1000],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/completions", json=body)
                statuses[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": total,
        "clients": clients,
        "statuses": dict(statuses),
        "wall_s": wall,
        "requests_per_s": total / wall,
        "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
        "latency_p95_s": latencies[int(len(latencies) * 0.95)] if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory; default: the small model")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--max-queue-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from kaito.runtime.inference import ServerConfig, start_server

    if args.model is None:
        from kaito.runtime.small_model import small_model_path

        args.model = str(small_model_path())
    config = ServerConfig(
        model=args.model,
        served_model_name="load",
        host="127.0.0.1",
        port=0,
        adapter_dir=None,
        num_threads=args.threads,
        max_queue_len=args.max_queue_len,
        log_level="warning",
    )
    server = start_server(config)
    try:
        asyncio.run(run_load(server.url, 64, args.clients, args.max_tokens))  # warm-up
        gc.collect()
        before = rss_mib()
        result = asyncio.run(run_load(server.url, args.requests, args.clients, args.max_tokens))
        gc.collect()
        result["rss_before_mib"] = before
        result["rss_after_mib"] = rss_mib()
    finally:
        server.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
