"""Preflight: read and tokenize the data with the tokenizer only, before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaito.runtime.tuning.config import TuningConfig
from kaito.runtime.tuning.data import DataIssue, DatasetError, LoadedData, load_examples, split
from kaito.runtime.tuning.encoding import Encoded, TokenStats, encode, load_tokenizer, token_stats

DEFAULT_MAX_LENGTH = 1024  # TRL SFTConfig.max_length


class QLoRAUnavailableError(RuntimeError):
    """QLoRA was requested where bitsandbytes 4-bit kernels cannot run (no CUDA device)."""


QLORA_NO_CUDA = (
    "QLoRA needs a CUDA GPU for bitsandbytes 4-bit weights, and none is available. Use "
    "method lora (QuantizationConfig.load_in_4bit: false), run on a GPU node, or pass "
    "--allow-lora-fallback to train plain LoRA on this machine."
)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_method(config: TuningConfig, *, allow_lora_fallback: bool) -> tuple[TuningConfig, str]:
    """The config to run with: a QLoRA request without CUDA fails unless fallback is explicit."""
    if config.method != "qlora" or cuda_available():
        return config, ""
    if not allow_lora_fallback:
        raise QLoRAUnavailableError(QLORA_NO_CUDA)
    note = "QLoRA requested but no CUDA device: training plain LoRA (--allow-lora-fallback)"
    quantization = {
        k: v for k, v in config.quantization.items() if k not in ("load_in_4bit", "load_in_8bit")
    }
    return config.replace(quantization=quantization, warnings=(*config.warnings, note)), note


@dataclass
class PreparedData:
    """Encoded train and eval sets, plus what preflight and lineage report about them."""

    train: list[Encoded]
    eval: list[Encoded]
    loaded: LoadedData
    stats: TokenStats
    warnings: list[str] = field(default_factory=list)


def max_length_of(config: TuningConfig) -> int | None:
    value = config.training.get("max_length", DEFAULT_MAX_LENGTH)
    return None if value is None else int(value)


def prepare_data(config: TuningConfig, data_dir: Path, tokenizer: Any) -> PreparedData:
    """Load, validate, split and encode; raise DatasetError naming file, row and column."""
    loaded = load_examples(data_dir, config.dataset)
    if not loaded.examples:
        raise DatasetError([DataIssue(str(data_dir), "Unable to load the dataset: no rows")])
    max_length = max_length_of(config)
    # `completion_only_loss: false` is TRL's way to ask for whole-sequence loss; honour it.
    full_sequence = config.training.get("completion_only_loss") is False
    encoded_by_id: dict[int, Encoded] = {}
    issues: list[DataIssue] = []
    for example in loaded.examples:
        try:
            encoded_by_id[id(example)] = encode(
                tokenizer, example, max_length, full_sequence=full_sequence
            )
        except ValueError as exc:
            issues.append(DataIssue(example.source, str(exc), row=example.row))
            if len(issues) >= 20:
                break
    if issues:
        raise DatasetError(issues)
    all_encoded = [encoded_by_id[id(e)] for e in loaded.examples]
    stats = token_stats(all_encoded, max_length)
    train_examples, eval_examples = split(loaded.examples, config.dataset)
    warnings: list[str] = []
    train = [encoded_by_id[id(e)] for e in train_examples]
    evaluation = [encoded_by_id[id(e)] for e in eval_examples]
    trainable = [e for e in train if e.trained_tokens]
    if len(trainable) < len(train):
        warnings.append(
            f"{len(train) - len(trainable)} training rows have no trainable tokens left after "
            f"truncation to max_length={max_length} and are skipped"
        )
    if not trainable:
        raise DatasetError(
            [DataIssue(str(data_dir), "no training row has a trainable token after truncation")]
        )
    if stats.truncated_rows:
        warnings.append(
            f"{stats.truncated_rows} of {stats.rows} rows are longer than max_length="
            f"{max_length} tokens and will be truncated"
        )
    return PreparedData(
        trainable, [e for e in evaluation if e.trained_tokens], loaded, stats, warnings
    )


@dataclass
class PreflightReport:
    """What `kaito tune --check` prints; `to_json()` is the machine-readable form."""

    ok: bool
    method: str
    model: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    train_rows: int = 0
    eval_rows: int = 0
    tokens: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "method": self.method,
            "model": self.model,
            "errors": self.errors,
            "warnings": self.warnings,
            "files": self.files,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "tokens": self.tokens,
        }

    def summary(self) -> str:
        if not self.ok:
            lines = ["preflight failed:"]
            lines += [f"  - {_issue_text(e)}" for e in self.errors]
            return "\n".join(lines)
        tokens = self.tokens or {}
        lines = [
            f"preflight ok: {self.train_rows} train / {self.eval_rows} eval rows from "
            f"{len(self.files)} file(s), method {self.method}",
            f"  tokens per row: min {tokens.get('min')}, mean {tokens.get('mean')}, "
            f"p95 {tokens.get('p95')}, max {tokens.get('max')}; "
            f"{tokens.get('truncated_rows')} row(s) over max_length={tokens.get('max_length')}",
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _issue_text(entry: dict[str, Any]) -> str:
    issue = DataIssue(entry["file"], entry["message"], entry.get("row"), entry.get("column"))
    return str(issue)


def preflight(
    config: TuningConfig,
    data_dir: Path,
    *,
    model_path: str | None = None,
    allow_lora_fallback: bool = False,
    tokenizer: Any = None,
) -> PreflightReport:
    """Check config, method and data without loading model weights; never raises on bad data."""
    model = model_path or config.model.pretrained_model_name_or_path
    report = PreflightReport(ok=False, method=config.method, model=model)
    try:
        config, _note = resolve_method(config, allow_lora_fallback=allow_lora_fallback)
        report.method = config.method
    except QLoRAUnavailableError as exc:
        report.errors.append({"file": "config", "row": None, "column": None, "message": str(exc)})
        return report
    report.warnings.extend(config.warnings)
    try:
        if tokenizer is None:
            tokenizer = load_tokenizer(
                model, config.model.chat_template, **config.model.tokenizer_kwargs()
            )
        prepared = prepare_data(config, data_dir, tokenizer)
    except DatasetError as exc:
        report.errors.extend(issue.to_json() for issue in exc.issues)
        return report
    except OSError as exc:
        report.errors.append(
            {"file": model, "row": None, "column": None, "message": f"tokenizer: {exc}"}
        )
        return report
    report.ok = True
    report.warnings.extend(prepared.warnings)
    report.files = [
        {
            "path": str(f.path),
            "format": f.format,
            "rows": f.rows,
            "sha256": f.sha256,
            "schema": prepared.loaded.schemas.get(str(f.path)),
        }
        for f in prepared.loaded.files
    ]
    report.train_rows, report.eval_rows = len(prepared.train), len(prepared.eval)
    report.tokens = prepared.stats.to_json()
    return report
