"""Data files are found deterministically, validated row by row, and masked for training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kaito.runtime.tuning.config import DatasetConfig
from kaito.runtime.tuning.data import DatasetError, load_examples, split
from kaito.runtime.tuning.encoding import IGNORE_INDEX, encode, load_tokenizer
from kaito.runtime.tuning.preflight import preflight
from tests.runtime.tuning.builders import (
    ANSWER,
    dolly_rows,
    messages_rows,
    mixed_dataset,
    prompt_completion_rows,
    text_rows,
    tiny_config,
    write_rows,
)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return load_tokenizer(str(model_dir))


SCHEMAS = [
    (messages_rows, "messages"),
    (prompt_completion_rows, "prompt_completion"),
    (dolly_rows, "dolly"),
    (text_rows, "text"),
]
# A CSV cell cannot hold a list of messages, so that one combination does not exist.
FORMAT_CASES = [
    (suffix, rows, layout)
    for suffix in (".parquet", ".csv", ".json", ".jsonl")
    for rows, layout in SCHEMAS
    if not (suffix == ".csv" and layout == "messages")
]


@pytest.mark.parametrize(("suffix", "rows", "layout"), FORMAT_CASES)
def test_every_format_and_schema_is_read_and_recognised(
    tmp_path: Path, suffix: str, rows: Any, layout: str
) -> None:
    write_rows(tmp_path / f"data{suffix}", rows(3))
    loaded = load_examples(tmp_path, DatasetConfig())
    assert len(loaded.examples) == 3
    assert list(loaded.schemas.values()) == [layout]
    assert loaded.files[0].sha256.startswith("sha256:")


def test_all_files_of_a_directory_are_used_in_sorted_order(tmp_path: Path) -> None:
    loaded = load_examples(mixed_dataset(tmp_path), DatasetConfig())
    assert [f.path.name for f in loaded.files] == sorted(f.path.name for f in loaded.files)
    assert len(loaded.examples) == 16


def test_the_split_is_seeded_and_repeatable(tmp_path: Path) -> None:
    examples = load_examples(mixed_dataset(tmp_path), DatasetConfig()).examples
    config = DatasetConfig(train_test_split=0.75, shuffle_seed=3)
    first, second = split(examples, config), split(examples, config)
    assert [e.row for e in first[0]] == [e.row for e in second[0]]
    assert (len(first[0]), len(first[1])) == (12, 4)
    other = split(examples, DatasetConfig(train_test_split=0.75, shuffle_seed=4))
    assert [(e.source, e.row) for e in other[0]] != [(e.source, e.row) for e in first[0]]


def test_column_mapping_in_dataset_config_works_unlike_upstream(tmp_path: Path) -> None:
    write_rows(tmp_path / "d.jsonl", [{"question": "Why?", "answer": "Because."}])
    config = DatasetConfig(context_column="question", response_column="answer")
    [example] = load_examples(tmp_path, config).examples
    assert (example.prompt, example.completion) == ("Why?", "Because.")


def test_only_assistant_tokens_are_trained_in_conversations(tokenizer: Any) -> None:
    from kaito.runtime.tuning.data import Example

    example = Example("messages", "f", 1, messages=tuple(messages_rows(1)[0]["messages"]))
    encoded = encode(tokenizer, example, None)
    trained = [
        t
        for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
        if label != IGNORE_INDEX
    ]
    assert tokenizer.decode(trained).strip() == ANSWER + tokenizer.eos_token
    assert encoded.labels[0] == IGNORE_INDEX


def test_only_the_completion_is_trained_in_prompt_completion_rows(tokenizer: Any) -> None:
    from kaito.runtime.tuning.data import Example

    example = Example("prompt_completion", "f", 1, prompt="Q: hi?\nA: ", completion="Hello.")
    encoded = encode(tokenizer, example, None)
    trained = [
        t
        for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
        if label != IGNORE_INDEX
    ]
    assert tokenizer.decode(trained) == "Hello." + tokenizer.eos_token


def _issues(tmp_path: Path) -> list[dict[str, Any]]:
    with pytest.raises(DatasetError) as caught:
        load_examples(tmp_path, DatasetConfig())
    return [issue.to_json() for issue in caught.value.issues]


def test_an_empty_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("")
    [issue] = _issues(tmp_path)
    assert issue["file"].endswith("train.jsonl")
    assert "empty" in issue["message"]


def test_a_corrupt_parquet_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "train.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    [issue] = _issues(tmp_path)
    assert issue["file"].endswith("train.parquet")
    assert "not a readable parquet file" in issue["message"]


def test_missing_columns_list_what_was_expected_and_found(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.csv", [{"question": "a", "reply": "b"}])
    [issue] = _issues(tmp_path)
    assert "missing columns" in issue["message"]
    assert "'question'" in issue["message"] and "'reply'" in issue["message"]


def test_wrong_types_name_file_row_and_column(tmp_path: Path) -> None:
    rows = prompt_completion_rows(3)
    rows[1]["completion"] = 42
    write_rows(tmp_path / "train.jsonl", rows)
    [issue] = _issues(tmp_path)
    assert (issue["row"], issue["column"]) == (2, "completion")
    assert "expected a string, got int" in issue["message"]


def test_malformed_messages_and_json_lines_are_reported_per_row(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    good = json.dumps(messages_rows(1)[0])
    no_reply = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    path.write_text(f"{good}\n{{not json\n{no_reply}\n")
    issues = _issues(tmp_path)
    assert issues[0]["row"] == 2 and "not valid JSON" in issues[0]["message"]


def test_a_conversation_without_a_reply_is_rejected(tmp_path: Path) -> None:
    rows = messages_rows(2)
    rows[1]["messages"] = [{"role": "user", "content": "hi"}]
    write_rows(tmp_path / "train.parquet", rows)
    [issue] = _issues(tmp_path)
    assert (issue["row"], issue["column"]) == (2, "messages")
    assert "no assistant reply" in issue["message"]


def test_preflight_reports_token_statistics_and_truncation(
    tmp_path: Path, model_dir: Path, tokenizer: Any
) -> None:
    mixed_dataset(tmp_path)
    report = preflight(
        tiny_config(max_length=40), tmp_path, model_path=str(model_dir), tokenizer=tokenizer
    )
    document = json.loads(json.dumps(report.to_json()))
    assert document["ok"] is True
    assert document["train_rows"] + document["eval_rows"] <= 16
    tokens = document["tokens"]
    assert tokens["max_length"] == 40
    assert 0 < tokens["truncated_rows"] < 16
    assert tokens["min"] <= tokens["p50"] <= tokens["max"]
    assert {f["schema"] for f in document["files"]} == {
        "messages",
        "dolly",
        "prompt_completion",
        "text",
    }
    assert any("truncated" in w for w in document["warnings"])


def test_preflight_collects_errors_instead_of_raising(tmp_path: Path, tokenizer: Any) -> None:
    (tmp_path / "train.csv").write_text("")
    report = preflight(tiny_config(), tmp_path, tokenizer=tokenizer)
    assert report.ok is False
    assert report.errors[0]["file"].endswith("train.csv")
    assert "preflight failed" in report.summary()


def test_qlora_without_cuda_fails_preflight_unless_fallback_is_explicit(
    tmp_path: Path, tokenizer: Any
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    mixed_dataset(tmp_path)
    config = tiny_config().replace(quantization={"load_in_4bit": True})
    refused = preflight(config, tmp_path, tokenizer=tokenizer)
    assert refused.ok is False and "QLoRA needs a CUDA GPU" in refused.errors[0]["message"]
    allowed = preflight(config, tmp_path, tokenizer=tokenizer, allow_lora_fallback=True)
    assert allowed.ok is True and allowed.method == "lora"
    assert any("plain LoRA" in w for w in allowed.warnings)


def test_whole_sequence_loss_is_available_when_asked_for(tmp_path: Path, tokenizer: Any) -> None:
    from kaito.runtime.tuning.preflight import prepare_data

    write_rows(tmp_path / "train.jsonl", messages_rows(2))
    masked = prepare_data(tiny_config(), tmp_path, tokenizer)
    whole = prepare_data(tiny_config(completion_only_loss=False), tmp_path, tokenizer)
    assert masked.stats.trained_tokens < whole.stats.trained_tokens == whole.stats.total_tokens
