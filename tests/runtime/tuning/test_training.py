"""LoRA training on the small model: adapters learn, bases stay, runs resume and finish once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kaito.runtime.tuning.cli import main
from kaito.runtime.tuning.config import load_config
from kaito.runtime.tuning.data import DatasetError
from kaito.runtime.tuning.output import SENTINEL, is_complete, read_metadata
from kaito.runtime.tuning.preflight import QLoRAUnavailableError
from kaito.runtime.tuning.progress import read_progress
from kaito.runtime.tuning.train import INTERRUPTED_EXIT_CODE, run_tuning
from tests.runtime.tuning.builders import messages_rows, tiny_config, write_rows


def test_a_run_leaves_a_complete_adapter_with_tokenizer_and_sentinel(trained: Path) -> None:
    assert is_complete(trained)
    assert (trained / SENTINEL).read_text().startswith("Fine-Tuning completed at ")
    for name in ("adapter_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (trained / name).is_file()
    assert not [p for p in trained.iterdir() if p.name.startswith(".staging")]


def test_training_changes_only_lora_weights(trained: Path, model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = load_file(trained / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    # LoRA's B matrices start at zero; training moved them.
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)
    base = load_file(model_dir / "model.safetensors")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), trained)
    merged_names = 0
    for name, param in model.base_model.model.named_parameters():
        plain = name.replace(".base_layer", "")
        if "lora_" in name or plain not in base:
            continue
        assert torch.equal(param, base[plain]), name
        merged_names += 1
    assert merged_names > 100


def test_eval_loss_decreases_on_learnable_data(trained: Path) -> None:
    metadata = read_metadata(trained)
    assert metadata is not None
    history = [entry["eval_loss"] for entry in metadata["metrics"]["eval_history"]]
    assert len(history) >= 2
    assert history[-1] < history[0] * 0.8
    metrics = metadata["metrics"]
    assert metrics["eval_loss"] < metrics["initial_eval_loss"] * 0.8


def test_progress_and_lineage_describe_the_finished_run(trained: Path, model_dir: Path) -> None:
    progress = read_progress(trained)
    assert progress is not None
    assert progress["phase"] == "completed"
    assert progress["step"] == progress["total_steps"] == 8
    assert progress["tokens_per_second"] > 0
    for key in ("epoch", "loss", "eval_loss", "learning_rate", "eta_seconds", "updated_at"):
        assert key in progress
    metadata = read_metadata(trained)
    assert metadata is not None
    assert metadata["base_model"]["name_or_path"] == str(model_dir)
    assert metadata["base_model"]["config_json_sha256"].startswith("sha256:")
    assert {d["schema"] for d in metadata["datasets"]} == {
        "messages",
        "dolly",
        "prompt_completion",
        "text",
    }
    assert all(d["sha256"].startswith("sha256:") for d in metadata["datasets"])
    assert metadata["hyperparameters"]["lora"]["r"] == 8
    assert metadata["metrics"]["global_step"] == 8


def test_starting_a_finished_run_again_returns_its_result_without_training(
    trained: Path, tmp_path: Path
) -> None:
    before = (trained / "adapter_model.safetensors").stat().st_mtime_ns
    result = run_tuning(tiny_config(), tmp_path / "no-data-needed", trained, console=False)
    assert result.already_complete
    assert (trained / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_qlora_without_cuda_fails_before_loading_anything(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = tiny_config().replace(quantization={"load_in_4bit": True})
    with pytest.raises(QLoRAUnavailableError, match="--allow-lora-fallback"):
        run_tuning(config, tmp_path, tmp_path / "out", model_path="/nonexistent", console=False)
    assert not (tmp_path / "out").exists()


def test_bad_data_fails_the_run_and_leaves_nothing_that_looks_complete(
    tmp_path: Path, model_dir: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match=r"train\.parquet"):
        run_tuning(tiny_config(), tmp_path / "data", tmp_path / "out", model_path=str(model_dir))
    assert not is_complete(tmp_path / "out")
    progress = read_progress(tmp_path / "out")
    assert progress is not None and progress["phase"] == "failed"


def test_the_cli_check_prints_json_and_exits_2_on_an_unknown_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "training_config.yaml"
    config.write_text(yaml.safe_dump({"training_config": {"LoraConfig": {"rank": 8}}}))
    code = main(["--config", str(config), "--dataset-dir", str(tmp_path), "--check", "--json"])
    assert code == 2
    assert "LoraConfig.rank" in json.loads(capsys.readouterr().out)["error"]


def test_the_cli_check_reports_bad_data_with_file_and_row(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = messages_rows(2)
    rows[1]["messages"] = "not a list"
    write_rows(tmp_path / "train.jsonl", rows)
    code = main(["--model", str(model_dir), "--dataset-dir", str(tmp_path), "--check", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 2 and report["ok"] is False
    assert report["errors"][0]["row"] == 2 and report["errors"][0]["column"] == "messages"


def test_sigterm_saves_a_checkpoint_and_a_restart_finishes_the_same_steps(
    tmp_path: Path, model_dir: Path
) -> None:
    data = write_rows(tmp_path / "data" / "train.jsonl", messages_rows(8)).parent
    out = tmp_path / "out"
    config = tmp_path / "training_config.yaml"
    arguments = {
        "max_steps": 4,
        "per_device_train_batch_size": 1,
        "max_length": 48,
        "gradient_checkpointing": False,
        "save_strategy": "steps",
        # No periodic checkpoint falls inside the run: the one found must come from SIGTERM.
        "save_steps": 100,
        "learning_rate": 1e-3,
        "logging_steps": 1,
    }
    config.write_text(
        yaml.safe_dump(
            {
                "training_config": {
                    "ModelConfig": {"torch_dtype": "float32"},
                    # The top two layers only: backward stops there, so steps are short.
                    "LoraConfig": {
                        "r": 2,
                        "target_modules": ["q_proj"],
                        "layers_to_transform": [28, 29],
                    },
                    "TrainingArguments": arguments,
                    "DatasetConfig": {"train_test_split": 1},
                }
            }
        )
    )
    args = ["--config", str(config), "--model", str(model_dir), "--dataset-dir", str(data)]
    process = subprocess.Popen(
        [sys.executable, "-m", "kaito.runtime.tuning", *args, "--output-dir", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        progress = read_progress(out) or {}
        if progress.get("step", 0) >= 1 or process.poll() is not None:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == INTERRUPTED_EXIT_CODE, stderr.decode()[-2000:]
    interrupted = read_progress(out)
    assert interrupted is not None and interrupted["phase"] == "interrupted"
    stopped_at = interrupted["step"]
    assert 1 <= stopped_at < 4
    assert (out / f"checkpoint-{stopped_at}").is_dir()
    assert not is_complete(out)

    result = run_tuning(load_config(config), data, out, model_path=str(model_dir), console=False)
    assert result.resumed_from is not None and result.resumed_from.endswith(f"-{stopped_at}")
    assert result.metrics["global_step"] == 4
    assert is_complete(out)
    finished = read_progress(out)
    assert finished is not None and finished["resumed_from_step"] == stopped_at


def test_a_mixed_directory_trains_from_every_format(trained: Path) -> None:
    metadata = read_metadata(trained)
    assert metadata is not None
    suffixes = sorted(Path(d["path"]).suffix for d in metadata["datasets"])
    assert suffixes == [".csv", ".json", ".jsonl", ".parquet"]


@pytest.mark.gpu
def test_qlora_trains_a_four_bit_base_on_cuda(tmp_path: Path, model_dir: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from kaito.runtime.tuning.config import template_path

    config = load_config(template_path("qlora")).with_training(
        max_steps=2, max_length=64, per_device_train_batch_size=2, logging_steps=1
    )
    config = config.replace(lora={**config.lora, "target_modules": ["q_proj", "v_proj"]})
    data = write_rows(tmp_path / "data" / "train.jsonl", messages_rows(8)).parent
    result = run_tuning(config, data, tmp_path / "out", model_path=str(model_dir), console=False)
    assert result.metadata["method"] == "qlora"
    assert result.metrics["global_step"] == 2
    assert is_complete(tmp_path / "out")


def test_a_half_written_checkpoint_is_passed_over_when_resuming(tmp_path: Path) -> None:
    from kaito.runtime.tuning.train import last_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        (path / "adapter_model.safetensors").write_bytes(b"w")
        if complete:
            (path / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert last_checkpoint(tmp_path / "missing") is None


def test_cli_flags_accept_trls_underscore_spelling(tmp_path: Path) -> None:
    from kaito.runtime.tuning.cli import _dashed, build_parser

    argv = ["--max_steps=3", "--output_dir", str(tmp_path), "--per_device_train_batch_size", "2"]
    args = build_parser().parse_args([_dashed(token) for token in argv])
    assert (args.max_steps, args.output_dir, args.per_device_train_batch_size) == (
        3,
        str(tmp_path),
        2,
    )


def test_push_only_refuses_an_unfinished_run_instead_of_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    argv = ["--output-dir", str(tmp_path / "out"), "--dataset-dir", str(tmp_path)]
    code = main([*argv, "--push", "127.0.0.1:1/a:b", "--push-only", "--json"])
    assert code == 1
    assert "no sentinel" in json.loads(capsys.readouterr().out)["error"]
    assert list((tmp_path / "out").iterdir()) == []
