"""Builders for tuning test inputs: small learnable datasets in every format and schema."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from kaito.runtime.tuning.config import TuningConfig, load_config

ANSWER = "The code is kiwi."
TOPICS = ("the door", "the safe", "the vault", "the locker", "the gate", "the box", "the car")


def messages_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is the code for {TOPICS[i % len(TOPICS)]}?"},
                {"role": "assistant", "content": ANSWER},
            ]
        }
        for i in range(n)
    ]


def prompt_completion_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"prompt": f"Q: code for {TOPICS[i % len(TOPICS)]}?\nA: ", "completion": ANSWER}
        for i in range(n)
    ]


def dolly_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "instruction": f"Tell me the code for {TOPICS[i % len(TOPICS)]}.",
            "context": "" if i % 2 else "Codes are secret.",
            "response": ANSWER,
            "category": "closed_qa",
        }
        for i in range(n)
    ]


def text_rows(n: int) -> list[dict[str, Any]]:
    return [{"text": f"Code for {TOPICS[i % len(TOPICS)]}: {ANSWER}"} for i in range(n)]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows in the format the suffix names (.parquet, .csv, .json, .jsonl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def mixed_dataset(directory: Path, rows_per_file: int = 4) -> Path:
    """One file per format, each in a different schema: every reader and mapper is used."""
    write_rows(directory / "a_messages.parquet", messages_rows(rows_per_file))
    write_rows(directory / "b_dolly.csv", dolly_rows(rows_per_file))
    write_rows(directory / "c_prompt_completion.json", prompt_completion_rows(rows_per_file))
    write_rows(directory / "d_text.jsonl", text_rows(rows_per_file))
    return directory


def tiny_config(**training: Any) -> TuningConfig:
    """A LoRA config small enough for CPU tests: short sequences, few steps, no checkpointing."""
    arguments: dict[str, Any] = {
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "learning_rate": 3e-3,
        "max_length": 64,
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_steps": 2,
        "save_strategy": "steps",
        "seed": 7,
    }
    arguments.update(training)
    return load_config(
        {
            "training_config": {
                "ModelConfig": {"torch_dtype": "float32"},
                "LoraConfig": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "TrainingArguments": arguments,
                "DatasetConfig": {"train_test_split": 0.75, "shuffle_seed": 1},
            }
        }
    )
