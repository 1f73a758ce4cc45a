"""The tuning run: config + data dir -> LoRA/QLoRA training with checkpoints -> adapter."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from kaito.contract.progress import PROGRESS_FILE, utc_now
from kaito.runtime.tuning.config import TuningConfig
from kaito.runtime.tuning.data import sha256_file
from kaito.runtime.tuning.encoding import Encoded, load_tokenizer
from kaito.runtime.tuning.inputs import read_inputs
from kaito.runtime.tuning.output import is_complete, publish, read_metadata
from kaito.runtime.tuning.preflight import (
    PreparedData,
    cuda_available,
    prepare_data,
    resolve_method,
)
from kaito.runtime.tuning.progress import ProgressReporter

# Upstream templates say `save_strategy: no` because upstream could not resume; here a run
# always checkpoints, by default every tenth of the run, so a restarted Job loses little.
DEFAULT_CHECKPOINT_RATIO = 0.1
DEFAULT_EVAL_RATIO = 0.25
DEFAULT_SAVE_TOTAL_LIMIT = 2
INTERRUPTED_EXIT_CODE = 128 + signal.SIGTERM


class TrainingInterruptedError(RuntimeError):
    """SIGTERM arrived: a checkpoint was saved and the run can be resumed by starting it again."""


@dataclass(frozen=True)
class TuningResult:
    """Where the adapter is and what the run measured; `metadata` is tuning_metadata.json."""

    output_dir: Path
    metadata: dict[str, Any]
    resumed_from: str | None = None
    already_complete: bool = False

    @property
    def metrics(self) -> dict[str, Any]:
        value = self.metadata.get("metrics", {})
        return value if isinstance(value, dict) else {}


def is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


@contextlib.contextmanager
def sigterm_requests_stop(stop: threading.Event) -> Iterator[None]:
    """While training, SIGTERM asks for a checkpoint and a clean stop instead of dying."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def training_arguments(
    config: TuningConfig, output_dir: Path, *, has_eval: bool, use_cuda: bool
) -> dict[str, Any]:
    """SFTConfig keyword arguments: the file's values plus runtime choices where it is silent."""
    values = dict(config.training)
    values["output_dir"] = str(output_dir)
    if not use_cuda:
        values.setdefault("bf16", False)
        values.setdefault("use_cpu", True)
    values.setdefault("report_to", "none")
    values.setdefault("disable_tqdm", True)
    values.setdefault("save_total_limit", DEFAULT_SAVE_TOTAL_LIMIT)
    if "packing" not in values and "padding_free" not in values:
        # Best-fit packing into max_length rows, attended per sequence through position ids:
        # no compute is spent on padding, and no example attends to another.
        values["packing"] = True
    if str(values.get("save_strategy", "")) in ("", "no"):
        values["save_strategy"] = "steps"
        if "save_steps" not in config.training:
            values["save_steps"] = DEFAULT_CHECKPOINT_RATIO
    if has_eval:
        if "eval_strategy" not in values:
            values["eval_strategy"] = "steps"
            values.setdefault("eval_steps", DEFAULT_EVAL_RATIO)
    else:
        values["eval_strategy"] = "no"
    values.setdefault("logging_steps", 1)
    if config.collator.get("pad_to_multiple_of") is not None:
        values.setdefault("pad_to_multiple_of", config.collator["pad_to_multiple_of"])
    # Rows arrive tokenized with their labels already masked (see encoding.py); TRL would
    # reject these flags for pre-tokenized data, and they are honoured there instead.
    values.pop("assistant_only_loss", None)
    values.pop("completion_only_loss", None)
    return values


def _dtype(name: str | None) -> Any:
    import torch

    if name in (None, "auto"):
        return "auto" if name == "auto" else None
    aliases = {"half": "float16", "float": "float32"}
    return getattr(torch, aliases.get(str(name), str(name)))


def load_model(config: TuningConfig, model_path: str, *, use_cuda: bool) -> Any:
    """The base model in the configured dtype; 4/8-bit through bitsandbytes for QLoRA."""
    from transformers import AutoModelForCausalLM

    m = config.model
    kwargs: dict[str, Any] = {
        "revision": m.revision,
        "cache_dir": m.cache_dir,
        "local_files_only": m.local_files_only,
        "trust_remote_code": m.trust_remote_code,
        "force_download": m.force_download,
    }
    dtype = _dtype(m.torch_dtype)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if use_cuda:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": local_rank} if world > 1 else m.device_map
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        quant = {k: v for k, v in config.quantization.items() if k != "quant_method"}
        kwargs["quantization_config"] = BitsAndBytesConfig(**quant)
    clean = {k: v for k, v in kwargs.items() if v is not None}
    model = AutoModelForCausalLM.from_pretrained(model_path, **clean)
    model.config.use_cache = False
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        checkpointing = bool(config.training.get("gradient_checkpointing", True))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    return model


def to_dataset(rows: list[Encoded]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]}
    )


def make_trainer(
    model: Any,
    tokenizer: Any,
    args_values: dict[str, Any],
    lora: dict[str, Any],
    train: list[Encoded],
    evaluation: list[Encoded],
    *,
    reporter: ProgressReporter | None = None,
    stop: threading.Event | None = None,
) -> Any:
    """An SFTTrainer over pre-tokenized rows (labels already mask prompts), with callbacks."""
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    class CountingTrainer(SFTTrainer):  # type: ignore[misc]
        """Counts the real (non-padding) tokens each step trains on."""

        tokens_seen = 0

        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            inputs = args[1] if len(args) > 1 else kwargs["inputs"]
            if "attention_mask" in inputs:
                self.tokens_seen += int(inputs["attention_mask"].sum())
            else:
                self.tokens_seen += int(inputs["input_ids"].numel())
            return super().training_step(*args, **kwargs)

    class RuntimeCallback(TrainerCallback):  # type: ignore[misc]
        """Progress file, console lines and SIGTERM checkpoints."""

        trainer: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if reporter is not None:
                reporter.training_started(state.global_step, state.max_steps, 0)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if stop is not None and stop.is_set():
                control.should_save = True
                control.should_training_stop = True
            if reporter is not None and self.trainer is not None:
                reporter.step(state.global_step, state.epoch or 0.0, self.trainer.tokens_seen)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if reporter is not None and logs:
                reporter.logged(dict(logs))

    callback = RuntimeCallback()
    trainer = CountingTrainer(
        model=model,
        args=SFTConfig(**args_values),
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(evaluation) if evaluation else None,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **lora),
        callbacks=[callback],
    )
    callback.trainer = trainer
    # With tqdm off, Trainer prints every log dict to stdout; our reporter says it better.
    trainer.remove_callback(PrinterCallback)
    return trainer


CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors")


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint that was written completely.

    A kill during a save can leave a `checkpoint-N` without its state; resuming from it would
    fail, so such a directory is passed over in favour of the one before it.
    """
    if not output_dir.is_dir():
        return None
    candidates = []
    for path in output_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if path.is_dir() and step.isdigit():
            candidates.append((int(step), path))
    for _step, path in sorted(candidates, reverse=True):
        if all((path / name).is_file() for name in CHECKPOINT_FILES):
            return str(path)
    return None


def _model_lineage(config: TuningConfig, model_path: str) -> dict[str, Any]:
    lineage: dict[str, Any] = {"name_or_path": model_path, "revision": config.model.revision}
    local = Path(model_path)
    for name in ("config.json", "model.safetensors"):
        path = local / name
        if path.is_file() and (name == "config.json" or path.stat().st_size < 4 << 30):
            lineage[f"{name.replace('.', '_')}_sha256"] = sha256_file(path)
    config_file = local / "config.json"
    if config_file.is_file():
        import json

        document = json.loads(config_file.read_text(encoding="utf-8"))
        lineage["model_type"] = document.get("model_type")
        lineage["hub_name"] = document.get("_name_or_path") or document.get("name_or_path")
    return lineage


def _datasets_lineage(prepared: PreparedData, data_dir: Path) -> list[dict[str, Any]]:
    sources = {entry["path"]: entry.get("source") for entry in read_inputs(data_dir)}
    return [
        {
            "path": str(f.path),
            "source": sources.get(str(f.path)),
            "format": f.format,
            "rows": f.rows,
            "sha256": f.sha256,
            "schema": prepared.loaded.schemas.get(str(f.path)),
        }
        for f in prepared.loaded.files
    ]


HYPERPARAMETER_KEYS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "packing",
    "padding_free",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "seed",
    "gradient_checkpointing",
    "bf16",
    "fp16",
)


def run_tuning(
    config: TuningConfig,
    data_dir: Path,
    output_dir: Path | None = None,
    *,
    model_path: str | None = None,
    allow_lora_fallback: bool = False,
    console: bool = True,
    overwrite: bool = False,
) -> TuningResult:
    """Train an adapter from `data_dir` into `output_dir` (default: the config's output_dir).

    Started again on the same directory, the run resumes from its last checkpoint; if it
    already finished, it returns the finished result. Raises DatasetError, ConfigError,
    QLoRAUnavailableError before any model is loaded, and TrainingInterruptedError after
    SIGTERM (a checkpoint was saved).
    """
    output = Path(output_dir) if output_dir is not None else config.output_dir()
    model = model_path or config.model.pretrained_model_name_or_path
    main = is_main_process()
    if is_complete(output) and not overwrite:
        return TuningResult(output, read_metadata(output) or {}, already_complete=True)
    config, _note = resolve_method(config, allow_lora_fallback=allow_lora_fallback)
    reporter = ProgressReporter(output / PROGRESS_FILE, console=console, enabled=main)
    started_at = utc_now()
    stop = threading.Event()
    try:
        reporter.phase("preparing", f"reading data from {data_dir}")
        for warning in config.warnings:
            reporter.say(f"warning: {warning}")
        tokenizer = load_tokenizer(
            model, config.model.chat_template, **config.model.tokenizer_kwargs()
        )
        prepared = prepare_data(config, data_dir, tokenizer)
        for warning in prepared.warnings:
            reporter.say(f"warning: {warning}")
        use_cuda = cuda_available()
        args_values = training_arguments(
            config, output, has_eval=bool(prepared.eval), use_cuda=use_cuda
        )
        reporter.phase("loading", f"{model} ({config.method})")
        base = load_model(config, model, use_cuda=use_cuda)
        trainer = make_trainer(
            base,
            tokenizer,
            args_values,
            config.lora,
            prepared.train,
            prepared.eval,
            reporter=reporter,
            stop=stop,
        )
        resume = last_checkpoint(output)
        if resume:
            reporter.say(f"resuming from {resume}")
        # The loss before any update is the baseline a person compares the result with; a
        # resumed run no longer has the untouched adapter, so it reports none.
        initial_eval_loss = None
        if prepared.eval and not resume:
            reporter.phase("evaluating", "eval loss before tuning")
            initial_eval_loss = float(trainer.evaluate()["eval_loss"])
        started = time.monotonic()
        with sigterm_requests_stop(stop):
            train_output = trainer.train(resume_from_checkpoint=resume)
        if stop.is_set():
            reporter.phase("interrupted", "SIGTERM: checkpoint saved; start again to resume")
            raise TrainingInterruptedError(f"interrupted by SIGTERM; checkpoint in {output}")
        metrics: dict[str, Any] = {
            "train_loss": train_output.training_loss,
            "global_step": trainer.state.global_step,
            "train_runtime_s": round(time.monotonic() - started, 2),
            "trained_tokens": trainer.tokens_seen,
        }
        if initial_eval_loss is not None:
            metrics["initial_eval_loss"] = initial_eval_loss
        if prepared.eval:
            metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
            metrics["eval_history"] = [
                {"step": entry.get("step"), "eval_loss": entry["eval_loss"]}
                for entry in trainer.state.log_history
                if "eval_loss" in entry
            ]
            reporter.update(eval_loss=round(metrics["eval_loss"], 6))
        if not main:
            return TuningResult(output, {"metrics": metrics}, resumed_from=resume)
        reporter.phase("saving", str(output))
        metadata = {
            "kaito_version": _kaito_version(),
            "method": config.method,
            "base_model": _model_lineage(config, model),
            "datasets": _datasets_lineage(prepared, data_dir),
            "data": {
                "train_rows": len(prepared.train),
                "eval_rows": len(prepared.eval),
                "tokens": prepared.stats.to_json(),
            },
            "hyperparameters": {
                "lora": _jsonable(config.lora),
                "quantization": _jsonable(config.quantization),
                "training": {
                    k: _jsonable(args_values[k]) for k in HYPERPARAMETER_KEYS if k in args_values
                },
                "total_steps": trainer.state.max_steps,
            },
            "metrics": metrics,
            "resumed_from": resume,
            "started_at": started_at,
            "finished_at": utc_now(),
            "config_sha256": hashlib.sha256(
                repr(sorted(config.training.items())).encode()
            ).hexdigest(),
        }

        def write(staging: Path) -> None:
            trainer.model.save_pretrained(str(staging))
            tokenizer.save_pretrained(str(staging))

        publish(output, write, metadata)
        reporter.update(
            phase="completed",
            step=trainer.state.global_step,
            message=f"adapter in {output}",
            eta_seconds=0.0,
        )
        reporter.say(f"[bold green]completed[/bold green] adapter in {output}")
        return TuningResult(output, metadata, resumed_from=resume)
    except TrainingInterruptedError:
        raise
    except BaseException as exc:
        reporter.update(phase="failed", message=f"{type(exc).__name__}: {exc}"[:2000])
        raise


def _kaito_version() -> str:
    try:
        from kaito import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - the runtime ships inside the kaito package
        return "unknown"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
