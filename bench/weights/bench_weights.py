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
Every throughput run records its wall time, this process's CPU seconds, its children's (the
registry, and the proxy on the capped link) and the share of the machine's CPU that other
jobs took meanwhile: on a shared 2-core machine the loopback ratio is a CPU budget question.
Prints a markdown table and writes JSON next to this file.

    ~/.cache/kaito/venv/bin/python bench/weights/bench_weights.py [--repeats 5] [--workers 4]
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

from kaito.runtime.oci.blobs import BlobClient, fetch_manifest  # noqa: E402
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


def _children_cpu_s() -> float:
    """CPU seconds of this process's children so far (the registry, a proxy), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def measured(action: Callable[[], Any]) -> dict[str, float]:
    """Wall seconds, this process's and its children's CPU seconds, and the CPU the rest of
    the machine took meanwhile (other jobs share these cores), for one run."""
    busy0, total0 = _machine_ticks()
    cpu0, children0 = time.process_time(), _children_cpu_s()
    wall = timed(action)
    client, server = time.process_time() - cpu0, _children_cpu_s() - children0
    busy1, total1 = _machine_ticks()
    ticks = os.sysconf("SC_CLK_TCK")
    others = max(0.0, (busy1 - busy0) / ticks - client - server)
    capacity = (total1 - total0) / ticks
    return {
        "s": wall,
        "client_cpu_s": client,
        "registry_cpu_s": server,
        "others_cpu_share": others / capacity if capacity else 0.0,
    }


def throughput(
    ref: str, work: Path, repeats: int, workers: int, chunk: int, *, warm_up: bool = True
) -> dict[str, Any]:
    seq: list[dict[str, float]] = []
    par: list[dict[str, float]] = []
    size = sum(size for _, _, size in weight_layers(fetch_manifest(ref)[0]))
    # One unrecorded run of each first: the first 540 MB written after the push costs several
    # times the CPU of later ones (page cache), and would otherwise land on whichever kind
    # happens to go first.
    for first in (
        lambda: sequential_download(ref, work / "seq"),
        lambda: pull_weights(
            ref, work / "par", cache_dir=work / "cache", workers=workers, chunk_size=chunk
        ),
    ):
        if warm_up:
            shutil.rmtree(work, ignore_errors=True)
            first()
    for index in range(repeats):
        for kind in ("sequential", "parallel") if index % 2 == 0 else ("parallel", "sequential"):
            shutil.rmtree(work, ignore_errors=True)
            if kind == "sequential":
                seq.append(measured(lambda: sequential_download(ref, work / "seq")))
            else:
                par.append(
                    measured(
                        lambda: pull_weights(
                            ref,
                            work / "par",
                            cache_dir=work / "cache",
                            workers=workers,
                            chunk_size=chunk,
                        )
                    )
                )
    shutil.rmtree(work, ignore_errors=True)
    seq_s = statistics.median(run["s"] for run in seq)
    par_s = statistics.median(run["s"] for run in par)
    # Noise on a shared machine only adds time, so the fastest run of each is the other
    # honest summary.
    seq_best, par_best = min(run["s"] for run in seq), min(run["s"] for run in par)

    def rounded(runs: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{key: round(value, 2) for key, value in run.items()} for run in runs]

    return {
        "bytes": size,
        "sequential_s": round(seq_s, 2),
        "parallel_s": round(par_s, 2),
        "sequential_mb_s": round(size / seq_s / 1e6, 1),
        "parallel_mb_s": round(size / par_s / 1e6, 1),
        "ratio": round(seq_s / par_s, 2),
        "best_ratio": round(seq_best / par_best, 2),
        "runs": {"sequential": rounded(seq), "parallel": rounded(par)},
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
    parser.add_argument("--repeats", type=int, default=5)
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
                    capped_ref, work / "t", 1, args.workers, chunk, warm_up=False
                )
            finally:
                proxy.terminate()
                proxy.wait()
            results["time_to_ready"] = time_to_ready(ref, work / "ready", args.workers, chunk)
    results["load_average_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        "| link | sequential MB/s | parallel pull MB/s | ratio (median) | ratio (best runs) "
        "| client CPU s (seq / par) |"
    )
    print("|---|---|---|---|---|---|")
    for key, row in results.items():
        if isinstance(row, dict) and "ratio" in row:
            cpu = " / ".join(
                str(statistics.median(run["client_cpu_s"] for run in row["runs"][kind]))
                for kind in ("sequential", "parallel")
            )
            print(
                f"| {key} | {row['sequential_mb_s']} | {row['parallel_mb_s']} | {row['ratio']}x "
                f"| {row['best_ratio']}x | {cpu} |"
            )
            for kind in ("sequential", "parallel"):
                print(f"  {kind} runs: {row['runs'][kind]}")
    ready = results["time_to_ready"]
    print("\n| start | pull s | ready s | downloaded bytes |\n|---|---|---|---|")
    for label, row in ready.items():
        print(f"| {label} | {row['pull_s']} | {row['ready_s']} | {row['downloaded_bytes']} |")
    print(f"\nload average {results['load_average']}, {results['cpus']} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
