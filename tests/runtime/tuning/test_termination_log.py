"""`kaito tune --check --termination-log`: the result a pod leaves for the operator, in 4 KiB."""

from __future__ import annotations

import json
from pathlib import Path

from kaito.runtime.oci.blobs import fetch_manifest
from kaito.runtime.tuning.cli import TERMINATION_LOG_LIMIT, compact_result, main
from tests.runtime.tuning.builders import messages_rows, write_rows
from tests.support.registry import LocalRegistry


def test_a_bad_row_is_left_in_the_termination_log_with_its_file_row_and_column(
    tmp_path: Path, model_dir: Path
) -> None:
    rows = messages_rows(3)
    rows[2]["messages"] = "not a list"
    write_rows(tmp_path / "data" / "train.jsonl", rows)
    log = tmp_path / "termination-log"
    argv = ["--model", str(model_dir), "--dataset-dir", str(tmp_path / "data"), "--check"]
    assert main([*argv, "--termination-log", str(log)]) == 2
    result = json.loads(log.read_text())
    assert result["ok"] is False
    error = result["errors"][0]
    assert (Path(error["file"]).name, error["row"], error["column"]) == (
        "train.jsonl",
        3,
        "messages",
    )


def test_a_huge_result_is_cut_to_the_kubelets_limit_but_keeps_the_first_problem() -> None:
    errors = [
        {"file": f"part-{i}.parquet", "row": i, "column": "messages", "message": "x" * 300}
        for i in range(100)
    ]
    files = [{"path": f"/mnt/data/part-{i}.parquet", "rows": 10} for i in range(100)]
    text = compact_result({"ok": False, "errors": errors, "files": files, "train_rows": 0})
    assert len(text.encode()) <= TERMINATION_LOG_LIMIT
    result = json.loads(text)
    assert result["errors"][0]["row"] == 0
    assert result["file_count"] == 100


def test_the_pusher_leaves_the_pushed_reference_and_digest_for_the_operator(
    trained: Path, oci_registry: LocalRegistry, model_dir: Path, tmp_path: Path
) -> None:
    ref = oci_registry.ref("adapters/termination-log", "0.0.1")
    log = tmp_path / "termination-log"
    argv = ["--model", str(model_dir), "--dataset-dir", str(tmp_path), "--output-dir", str(trained)]
    code = main([*argv, "--push", ref, "--push-only", "--termination-log", str(log), "--quiet"])
    assert code == 0
    pushed = json.loads(log.read_text())["pushed"]
    _, digest = fetch_manifest(ref)
    assert pushed == {"reference": ref, "digest": digest}
