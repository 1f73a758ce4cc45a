"""Tuning throughput: kaito's pipeline (masked, packed, padding-free) vs a plain padded SFT loop.

Both variants train the same LoRA on the same examples of SmolLM2-135M-Instruct for the same
wall-clock work, each in its own child process so peak memory is measured per variant
(max RSS on CPU, max allocated on CUDA). Reported: real (non-padding) tokens per second.

    ~/.cache/kaito/venv/bin/python bench/tuning/bench_packing.py [--examples 64] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORDS = tuple(
    [
        "cluster",
        "node",
        "model",
        "adapter",
        "tuning",
        "gpu",
        "kernel",
        "batch",
        "token",
        "layer",
        "weight",
        "image",
        "registry",
        "workspace",
        "preset",
        "inference",
        "server",
        "request",
        "latency",
        "memory",
        "throughput",
        "schedule",
    ]
)


def make_examples(count: int, seed: int) -> list[dict[str, Any]]:
    """Chat examples whose reply lengths are skewed like real SFT data (many short, few long)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        reply_words = min(360, max(4, int(rng.lognormvariate(3.6, 0.9))))
        reply = " ".join(rng.choice(WORDS) for _ in range(reply_words))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}: explain {rng.choice(WORDS)}."},
                    {"role": "assistant", "content": reply},
                ]
            }
        )
    return rows


def lora_kwargs() -> dict[str, Any]:
    return {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated()) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_baseline(args: argparse.Namespace, model_path: str) -> dict[str, Any]:
    """A plain SFT loop: batches padded to their longest row, loss on every real token."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_kwargs()))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    texts = [
        tokenizer.apply_chat_template(row["messages"], tokenize=False)
        for row in make_examples(args.examples, args.seed)
    ]
    model.train()
    tokens = 0
    steps = 0
    started = time.perf_counter()
    for start in range(0, len(texts), args.baseline_batch):
        batch = tokenizer(
            texts[start : start + args.baseline_batch],
            padding="longest",
            truncation=True,
            max_length=args.max_length,
            return_tensors="pt",
            add_special_tokens=False,
        ).to(device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
        steps += 1
    elapsed = time.perf_counter() - started
    return {"tokens": tokens, "seconds": elapsed, "steps": steps}


def run_kaito(args: argparse.Namespace, model_path: str, workdir: Path) -> dict[str, Any]:
    """kaito's pipeline: assistant-only labels, best-fit packing, padding-free batches."""
    import torch

    from kaito.runtime.tuning.config import load_config
    from kaito.runtime.tuning.data import Example
    from kaito.runtime.tuning.encoding import encode, load_tokenizer
    from kaito.runtime.tuning.train import load_model, make_trainer, training_arguments

    config = load_config(
        {
            "training_config": {
                "ModelConfig": {"torch_dtype": "float32"},
                "TrainingArguments": {
                    "num_train_epochs": 1,
                    "per_device_train_batch_size": args.packed_batch,
                    "max_length": args.max_length,
                    "learning_rate": 1e-4,
                    "gradient_checkpointing": False,
                    "save_strategy": "no",
                    "logging_steps": 1000,
                    "seed": args.seed,
                },
            }
        }
    )
    tokenizer = load_tokenizer(model_path)
    rows = [
        encode(
            tokenizer,
            Example("messages", "bench", i, messages=tuple(r["messages"])),
            args.max_length,
        )
        for i, r in enumerate(make_examples(args.examples, args.seed))
    ]
    use_cuda = torch.cuda.is_available()
    values = training_arguments(config, workdir, has_eval=False, use_cuda=use_cuda)
    values["save_strategy"] = "no"
    model = load_model(config, model_path, use_cuda=use_cuda)
    trainer = make_trainer(model, tokenizer, values, lora_kwargs(), rows, [])
    started = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - started
    return {"tokens": trainer.tokens_seen, "seconds": elapsed, "steps": trainer.state.global_step}


def child(args: argparse.Namespace) -> None:
    import tempfile

    import torch

    torch.manual_seed(args.seed)
    from kaito.runtime.small_model import small_model_path

    model_path = str(small_model_path())
    if args.variant == "baseline":
        result = run_baseline(args, model_path)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_kaito(args, model_path, Path(tmp))
    result["tokens_per_second"] = result["tokens"] / result["seconds"]
    result["peak_memory_mb"] = peak_memory_mb()
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--baseline-batch", type=int, default=8)
    parser.add_argument("--packed-batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=("baseline", "kaito"))
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    results = {}
    for variant in ("baseline", "kaito"):
        command = [sys.executable, __file__, "--variant", variant]
        for flag in ("examples", "max_length", "baseline_batch", "packed_batch", "seed"):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(lines[-1].removeprefix("RESULT "))
    base, ours = results["baseline"], results["kaito"]
    summary = {
        "baseline": base,
        "kaito": ours,
        "speedup": ours["tokens_per_second"] / base["tokens_per_second"],
        "memory_ratio": ours["peak_memory_mb"] / base["peak_memory_mb"],
        "examples": args.examples,
        "max_length": args.max_length,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'variant':<10} {'tokens':>8} {'seconds':>8} {'tokens/s':>9} {'peak MiB':>9}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['tokens']:>8} {r['seconds']:>8.1f} "
            f"{r['tokens_per_second']:>9.1f} {r['peak_memory_mb']:>9.0f}"
        )
    print(f"speedup {summary['speedup']:.2f}x, peak memory ratio {summary['memory_ratio']:.2f}")


if __name__ == "__main__":
    main()
