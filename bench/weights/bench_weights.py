"""Weights pull: parallel ranged pull vs a plain sequential download; cold vs warm server start.

Runs, in one invocation against a registry on 127.0.0.1 (Debian's docker-registry):
1. SmolLM2-135M-Instruct (small_model_path(), ~540 MB float32) is packaged and pushed once;
2. throughput, repeated and alternated: a plain sequential download of the same blobs (one
   GET per file, sha256 computed while streaming, the way a simple puller verifies) against
   `pull_weights` into an empty cache (parallel byte ranges, digest checked);
3. the same two over a link that caps each TCP connection (`--cap-mb-s`, default 15 MB/s),
   a stand-in for a remote registry or CDN that limits every stream (a proxy in its own
   process, tests/runtime/weights/proxy.py);
4. time to a ready inference server (kaito.runtime.inference.server.start_server), after one
   throwaway start: pull from an empty cache then start, against pull from the warm node
   cache then start.
Prints a markdown table and writes JSON next to this file.

    ~/.cache/kaito/venv/bin/python bench/weights/bench_weights.py [--repeats 3] [--workers 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tests.support.registry import start_registry  # noqa: E402

from kaito.runtime.oci.blobs import BlobClient  # noqa: E402
from kaito.runtime.oci.image import fetch_manifest  # noqa: E402
from kaito.runtime.oci.weights import (  # noqa: E402
    package_weights,
    pull_weights,
    push_weights,
    weight_layers,
)
from kaito.runtime.small_model import small_model_path  # noqa: E402


def sequential_download(ref: str, dest: Path) -> int:
    """The baseline: each file in turn, one GET, hashed while it streams; returns bytes."""
    manifest, _ = fetch_manifest(ref)
    client = BlobClient(ref)
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, digest, _size in weight_layers(manifest):
        hasher = hashlib.sha256()
        with (dest / name).open("wb") as fh:

            def sink(data: bytes, fh: Any = fh, hasher: Any = hasher) -> None:
                hasher.update(data)
                fh.write(data)

            total += client.download(digest, sink)
        if "sha256:" + hasher.hexdigest() != digest:
            raise RuntimeError(f"{name}: digest mismatch")
    return total


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def throughput(ref: str, work: Path, repeats: int, workers: int, chunk: int) -> dict[str, Any]:
    seq, par = [], []
    size = 0
    for index in range(repeats):
        for kind in ("sequential", "parallel") if index % 2 == 0 else ("parallel", "sequential"):
            shutil.rmtree(work, ignore_errors=True)
            if kind == "sequential":
                seq.append(timed(lambda: sequential_download(ref, work / "seq")))
            else:
                result = pull_weights(
                    ref, work / "par", cache_dir=work / "cache", workers=workers, chunk_size=chunk
                )
                par.append(result.seconds)
                size = result.downloaded_bytes
    shutil.rmtree(work, ignore_errors=True)
    seq_s, par_s = statistics.median(seq), statistics.median(par)
    return {
        "bytes": size,
        "sequential_s": round(seq_s, 2),
        "parallel_s": round(par_s, 2),
        "sequential_mb_s": round(size / seq_s / 1e6, 1),
        "parallel_mb_s": round(size / par_s / 1e6, 1),
        "ratio": round(seq_s / par_s, 2),
        "runs": {"sequential": [round(s, 2) for s in seq], "parallel": [round(s, 2) for s in par]},
    }


def time_to_ready(ref: str, work: Path, workers: int, chunk: int) -> dict[str, Any]:
    from kaito.runtime.inference.config import ServerConfig
    from kaito.runtime.inference.server import start_server

    # One throwaway start first: imports, kernels and the page cache are warm for both runs,
    # so the two differ by the pull alone.
    start_server(
        ServerConfig(model=str(small_model_path()), host="127.0.0.1", port=0, adapter_dir=None)
    ).stop()
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    out: dict[str, Any] = {}
    for label in ("empty_cache", "warm_cache"):
        dest = work / f"weights-{label}"
        shutil.rmtree(dest, ignore_errors=True)
        started = time.perf_counter()
        pulled = pull_weights(ref, dest, cache_dir=cache, workers=workers, chunk_size=chunk)
        pull_s = time.perf_counter() - started
        server = start_server(
            ServerConfig(model=str(dest), host="127.0.0.1", port=0, adapter_dir=None)
        )
        ready_s = time.perf_counter() - started
        server.stop()
        out[label] = {
            "pull_s": round(pull_s, 2),
            "ready_s": round(ready_s, 2),
            "downloaded_bytes": pulled.downloaded_bytes,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--chunk-mib", type=int, default=32)
    parser.add_argument("--cap-mb-s", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    chunk = args.chunk_mib << 20
    with tempfile.TemporaryDirectory(prefix="kaito-bench-weights-") as tmp:
        work = Path(tmp)
        with start_registry(work / "registry") as registry:
            ref = registry.ref("models/smollm2-135m-instruct", "bench")
            package = package_weights(small_model_path(), model_name="smollm2-135m-instruct")
            push_weights(package, ref)
            results: dict[str, Any] = {
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "workers": args.workers,
                "chunk_mib": args.chunk_mib,
            }
            results["loopback"] = throughput(ref, work / "t", args.repeats, args.workers, chunk)
            cap = str(args.cap_mb_s * 1e6)
            proxy = subprocess.Popen(
                [sys.executable, "-m", "tests.runtime.weights.proxy", registry.host, cap],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert proxy.stdout is not None
                capped_ref = f"{proxy.stdout.readline().strip()}/models/smollm2-135m-instruct:bench"
                results[f"capped_{args.cap_mb_s:g}mb_s_per_connection"] = throughput(
                    capped_ref, work / "t", 1, args.workers, chunk
                )
            finally:
                proxy.terminate()
                proxy.wait()
            results["time_to_ready"] = time_to_ready(ref, work / "ready", args.workers, chunk)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| link | sequential MB/s | parallel pull MB/s | ratio |")
    print("|---|---|---|---|")
    for key, row in results.items():
        if isinstance(row, dict) and "ratio" in row:
            print(
                f"| {key} | {row['sequential_mb_s']} | {row['parallel_mb_s']} | {row['ratio']}x |"
            )
    ready = results["time_to_ready"]
    print("\n| start | pull s | ready s | downloaded bytes |\n|---|---|---|---|")
    for label, row in ready.items():
        print(f"| {label} | {row['pull_s']} | {row['ready_s']} | {row['downloaded_bytes']} |")
    print(f"\nload average {results['load_average']}, {results['cpus']} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
