"""`kaito tune` / `python -m kaito.runtime.tuning`: TRL-style flags over upstream's config file."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from kaito.contract.files import DATA_DIR, TRAINING_CONFIG_FILE, TRAINING_CONFIG_PATH
from kaito.contract.result import pushed_entry
from kaito.runtime.tuning.urls import redact_report, redact_text

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2


def build_parser(prog: str = "kaito tune") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Fine-tune a causal LM with LoRA/QLoRA from upstream KAITO's tuning config "
            f"({TRAINING_CONFIG_FILE}). Flags override the file."
        ),
    )
    source = parser.add_argument_group("config")
    source.add_argument(
        "--config",
        help=f"tuning config YAML (default: $YAML_FILE_PATH, {TRAINING_CONFIG_PATH} if present, "
        "else the packaged template for --method)",
    )
    source.add_argument(
        "--method",
        choices=("lora", "qlora"),
        default="lora",
        help="template to use when no config file is given",
    )
    source.add_argument("--print-template", action="store_true", help="print the template, exit")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset-dir",
        "--input",
        dest="dataset_dir",
        help=f"directory with .parquet/.csv/.json/.jsonl files (default: $DATASET_FOLDER_PATH or "
        f"{DATA_DIR}); downloads and image pulls land here",
    )
    data.add_argument("--url", action="append", default=[], help="download a data file (repeat)")
    data.add_argument("--image", help="pull an image's /data as the dataset")
    model = parser.add_argument_group("model and output")
    model.add_argument("--model", "--model-name-or-path", dest="model", help="base model path")
    model.add_argument("--output-dir", help="results directory (adapter, checkpoints, progress)")
    model.add_argument("--overwrite", action="store_true", help="retrain even if already complete")
    training = parser.add_argument_group("training (override TrainingArguments)")
    training.add_argument("--max-steps", type=int)
    training.add_argument("--num-train-epochs", type=float)
    training.add_argument("--learning-rate", type=float)
    training.add_argument("--per-device-train-batch-size", type=int)
    training.add_argument("--gradient-accumulation-steps", type=int)
    training.add_argument("--max-length", "--max-seq-length", dest="max_length", type=int)
    training.add_argument("--save-steps", type=float, help="checkpoint every N steps (<1: ratio)")
    training.add_argument("--logging-steps", type=float)
    training.add_argument("--seed", type=int)
    training.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None
    )
    training.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None)
    training.add_argument(
        "--allow-lora-fallback",
        action="store_true",
        help="when QLoRA is requested but no CUDA device exists, train plain LoRA instead",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--check", action="store_true", help="preflight only: validate, no training")
    run.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    run.add_argument(
        "--termination-log",
        help="also write a compact result here (a pod's terminationMessagePath, 4 KiB at most)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress on the terminal")
    push = parser.add_argument_group("publish")
    push.add_argument("--push", metavar="IMAGE", help="push the adapter to this image reference")
    push.add_argument(
        "--push-only",
        action="store_true",
        help="push an already finished results directory; never train (a pusher container)",
    )
    push.add_argument("--model-name", help="sh.kaito.model.name annotation (preset name)")
    push.add_argument("--docker-config", help="Docker config JSON with registry credentials")
    push.add_argument(
        "--insecure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="plain HTTP to the registry (default: only for loopback registries)",
    )
    return parser


def _dashed(token: str) -> str:
    """TRL's scripts spell flags with underscores (`--max_steps`); accept both spellings."""
    if not token.startswith("--"):
        return token
    name, eq, value = token.partition("=")
    return name.replace("_", "-") + eq + value


def _config_source(args: argparse.Namespace) -> str | Path:
    from kaito.runtime.tuning.config import template_path

    explicit = args.config or os.environ.get("YAML_FILE_PATH")
    if explicit:
        return Path(explicit)
    if Path(TRAINING_CONFIG_PATH).is_file():
        return Path(TRAINING_CONFIG_PATH)
    return template_path(args.method)


# The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_LOG_LIMIT = 4096


def compact_result(document: dict[str, Any], limit: int = TERMINATION_LOG_LIMIT) -> str:
    """The result as one JSON line within `limit` bytes: per-file details go first, then
    problems beyond the first few, so the counts and the first located problem always fit."""
    small = {k: v for k, v in document.items() if k != "files"}
    if "files" in document:
        small["file_count"] = len(document["files"])
    for keep in (20, 5, 1, 0):
        for key in ("errors", "warnings"):
            if isinstance(small.get(key), list):
                small[key] = small[key][:keep]
        text = json.dumps(small, separators=(",", ":"), default=str)
        if len(text.encode()) <= limit:
            return text
    return json.dumps({"ok": document.get("ok", False), "error": "result too large"})


def _emit(args: argparse.Namespace, document: dict[str, Any], text: str, code: int) -> int:
    # The termination message reaches the operator's status and Events: no URL secrets.
    document, text = redact_report(document), redact_text(text)
    if getattr(args, "termination_log", None):
        with contextlib.suppress(OSError):  # reporting must not change the exit code
            Path(args.termination_log).write_text(compact_result(document), encoding="utf-8")
    if args.json:
        print(json.dumps(document, indent=2))
    elif text:
        print(text, file=sys.stderr if code else sys.stdout)
    return code


def main(argv: list[str] | None = None, prog: str = "kaito tune") -> int:
    """Run the command; returns the process exit code (2: invalid input, 143: interrupted)."""
    raw = sys.argv[1:] if argv is None else argv
    args = build_parser(prog).parse_args([_dashed(token) for token in raw])
    from kaito.runtime.tuning.config import ConfigError, load_config, template_text

    if args.print_template:
        print(template_text(args.method), end="")
        return EXIT_OK
    try:
        config = load_config(_config_source(args))
        overrides = {
            "max_steps": args.max_steps,
            "num_train_epochs": args.num_train_epochs,
            "learning_rate": args.learning_rate,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "max_length": args.max_length,
            "save_steps": args.save_steps,
            "logging_steps": args.logging_steps,
            "seed": args.seed,
            "gradient_checkpointing": args.gradient_checkpointing,
            "packing": args.packing,
            # A relative --output-dir means the working directory, not upstream's /mnt.
            "output_dir": str(Path(args.output_dir).absolute()) if args.output_dir else None,
        }
        config = config.with_training(**overrides)
    except (ConfigError, OSError) as exc:
        return _emit(args, {"ok": False, "error": str(exc)}, f"error: {exc}", EXIT_INVALID)
    data_dir = Path(args.dataset_dir or os.environ.get("DATASET_FOLDER_PATH") or DATA_DIR)
    docker_config = Path(args.docker_config) if args.docker_config else None
    try:
        _fetch_inputs(args, data_dir, docker_config)
    except Exception as exc:
        message = f"input: {exc}"
        return _emit(args, {"ok": False, "error": message}, f"error: {message}", EXIT_INVALID)
    if args.check:
        from kaito.runtime.tuning.preflight import preflight

        report = preflight(
            config, data_dir, model_path=args.model, allow_lora_fallback=args.allow_lora_fallback
        )
        return _emit(
            args, report.to_json(), report.summary(), EXIT_OK if report.ok else EXIT_INVALID
        )
    return _train(args, config, data_dir, docker_config)


def _fetch_inputs(args: argparse.Namespace, data_dir: Path, docker_config: Path | None) -> None:
    from kaito.runtime.tuning.inputs import fetch_image, fetch_urls

    if args.url:
        fetch_urls(list(args.url), data_dir)
    if args.image:
        fetch_image(args.image, data_dir, docker_config=docker_config, insecure=args.insecure)


def _train(
    args: argparse.Namespace, config: Any, data_dir: Path, docker_config: Path | None
) -> int:
    from kaito.runtime.oci.registry import RegistryError
    from kaito.runtime.tuning.data import DatasetError
    from kaito.runtime.tuning.preflight import QLoRAUnavailableError
    from kaito.runtime.tuning.train import (
        INTERRUPTED_EXIT_CODE,
        TrainingInterruptedError,
        run_tuning,
    )

    if args.push_only:
        from kaito.runtime.tuning.output import is_complete

        output = config.output_dir()
        if not args.push or not is_complete(output):
            message = f"--push-only needs --push and a finished run in {output} (no sentinel)"
            return _emit(args, {"ok": False, "error": message}, f"error: {message}", EXIT_FAILED)
    try:
        result = run_tuning(
            config,
            data_dir,
            model_path=args.model,
            allow_lora_fallback=args.allow_lora_fallback,
            console=not args.quiet and not args.json,
            overwrite=args.overwrite,
        )
    except (DatasetError, QLoRAUnavailableError) as exc:
        return _emit(args, {"ok": False, "error": str(exc)}, f"error: {exc}", EXIT_INVALID)
    except TrainingInterruptedError as exc:
        return _emit(args, {"ok": False, "error": str(exc)}, str(exc), INTERRUPTED_EXIT_CODE)
    document: dict[str, Any] = {
        "ok": True,
        "output_dir": str(result.output_dir),
        "already_complete": result.already_complete,
        "resumed_from": result.resumed_from,
        "metrics": result.metrics,
    }
    text = f"adapter in {result.output_dir}"
    if args.push:
        from kaito.runtime.oci.adapter import push_adapter

        try:
            pushed = push_adapter(
                result.output_dir,
                args.push,
                model_name=args.model_name or str(args.model or ""),
                docker_config=docker_config,
                insecure=args.insecure,
                log=lambda line: print(line, file=sys.stderr),
            )
        except RegistryError as exc:
            document.update(ok=False, error=str(exc))
            return _emit(args, document, f"error: push failed: {exc}", EXIT_FAILED)
        document.update(pushed_entry(pushed.reference, pushed.digest))
        text += f"; pushed {pushed.reference}@{pushed.digest}"
    return _emit(args, document, text, EXIT_OK)
