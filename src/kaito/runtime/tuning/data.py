"""Dataset files: deterministic discovery, reading, schema detection, row validation, split."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kaito.runtime.tuning.config import DatasetConfig

EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
# Files the runtime itself writes next to downloaded data; never training data.
IGNORED_NAMES = {"inputs.json"}
ROLES = {"system", "user", "assistant", "tool", "developer"}
MAX_ISSUES = 20
Kind = Literal["messages", "prompt_completion", "text"]


@dataclass(frozen=True)
class DataIssue:
    """One problem with the data, located as precisely as the format allows (row is 1-based)."""

    file: str
    message: str
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column {self.column!r}"
        return f"{where}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "column": self.column, "message": self.message}


class DatasetError(ValueError):
    """The data cannot be trained on; `issues` names each file, row and column at fault."""

    def __init__(self, issues: Sequence[DataIssue]) -> None:
        self.issues = list(issues)
        shown = "\n".join(f"  - {issue}" for issue in self.issues[:10])
        more = f"\n  ... and {len(self.issues) - 10} more" if len(self.issues) > 10 else ""
        super().__init__(f"invalid training data:\n{shown}{more}")


@dataclass(frozen=True)
class Example:
    """One training example in a normalised shape; `source`/`row` point back at the input."""

    kind: Kind
    source: str
    row: int
    messages: tuple[dict[str, str], ...] = ()
    # Messages from this index on are trained (the completion part of conversational data).
    train_from: int = 0
    prompt: str = ""
    completion: str = ""
    text: str = ""


@dataclass(frozen=True)
class DataFile:
    """A discovered input file with its digest (recorded in the adapter's lineage)."""

    path: Path
    format: str
    sha256: str
    rows: int = 0


@dataclass(frozen=True)
class Schema:
    """How a file's columns map to one of the three example shapes."""

    kind: Kind
    layout: str
    columns: dict[str, str] = field(default_factory=dict)


def discover_files(data_dir: Path, config: DatasetConfig) -> list[Path]:
    """Data files to train on: `dataset_path` if set, else every supported file, sorted.

    Upstream took the first file whose name merely contained "json" or "csv" in walk order;
    sorting all matches by path makes the choice deterministic and uses every file.
    """
    if config.dataset_path:
        raw = Path(config.dataset_path)
        candidates = [raw] if raw.is_absolute() else [data_dir / raw, data_dir / raw.name]
        for candidate in candidates:
            if candidate.is_file():
                return [candidate]
            if candidate.is_dir():
                data_dir = candidate
                break
        else:
            raise DatasetError([DataIssue(str(raw), "DatasetConfig.dataset_path does not exist")])
    if not data_dir.is_dir():
        raise DatasetError([DataIssue(str(data_dir), "the dataset directory does not exist")])
    found = sorted(
        path
        for path in data_dir.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(data_dir).parts)
        and path.name not in IGNORED_NAMES
        and (_format_of(path, config) is not None)
    )
    if not found:
        raise DatasetError(
            [
                DataIssue(
                    str(data_dir),
                    "Unable to find a valid dataset file (.parquet, .csv, .json or .jsonl)",
                )
            ]
        )
    return found


def _format_of(path: Path, config: DatasetConfig) -> str | None:
    if config.dataset_extension:
        ext = config.dataset_extension.lower().lstrip(".")
        return "json" if ext == "jsonl" else ext if ext in {"parquet", "csv", "json"} else None
    return EXTENSIONS.get(path.suffix.lower())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    """All rows of one file as dicts; unreadable or empty files raise DatasetError."""
    name = str(path)
    if path.stat().st_size == 0:
        raise DatasetError([DataIssue(name, "the file is empty")])
    if fmt == "parquet":
        rows = _read_parquet(path)
    elif fmt == "csv":
        rows = _read_csv(path)
    elif fmt == "json":
        rows = _read_json(path)
    else:
        raise DatasetError([DataIssue(name, f"unsupported dataset format {fmt!r}")])
    if not rows:
        raise DatasetError([DataIssue(name, "the file has no rows")])
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DatasetError(
                [DataIssue(name, f"expected an object, got {type(row).__name__}", row=index)]
            )
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError([DataIssue(str(path), f"not a readable parquet file: {exc}")]) from exc
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = []
            for index, row in enumerate(reader, start=1):
                if None in row:
                    raise DatasetError(
                        [DataIssue(str(path), "more fields than the header has", row=index)]
                    )
                rows.append(dict(row))
            return rows
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError([DataIssue(str(path), f"not a readable CSV file: {exc}")]) from exc


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError([DataIssue(str(path), f"not UTF-8 text: {exc}")]) from exc
    stripped = text.lstrip()
    if not stripped:
        raise DatasetError([DataIssue(str(path), "the file is empty")])
    if stripped.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                [DataIssue(str(path), f"not valid JSON: {exc.msg} (line {exc.lineno})")]
            ) from exc
        return list(value)
    rows: list[dict[str, Any]] = []
    issues: list[DataIssue] = []
    for index, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            issues.append(DataIssue(str(path), f"not valid JSON: {exc.msg}", row=index))
            if len(issues) >= MAX_ISSUES:
                break
    if issues:
        raise DatasetError(issues)
    return rows


def detect_schema(path: Path, columns: Iterable[str], config: DatasetConfig) -> Schema:
    """Map columns to an example shape: explicit DatasetConfig columns first, then detection."""
    present = set(columns)

    def need(*names: str) -> None:
        missing = [n for n in names if n not in present]
        if missing:
            raise DatasetError(
                [
                    DataIssue(
                        str(path),
                        f"missing column(s) {missing} named in DatasetConfig; "
                        f"found {sorted(present)}",
                        column=missing[0],
                    )
                ]
            )

    if config.messages_column:
        need(config.messages_column)
        return Schema("messages", "messages", {"messages": config.messages_column})
    if config.context_column:
        need(config.context_column, config.response_column)
        return Schema(
            "prompt_completion",
            "columns",
            {"prompt": config.context_column, "completion": config.response_column},
        )
    if config.response_column != "text":
        need(config.response_column)
        return Schema("text", "text", {"text": config.response_column})
    if "messages" in present:
        return Schema("messages", "messages", {"messages": "messages"})
    if "conversations" in present:
        return Schema("messages", "sharegpt", {"messages": "conversations"})
    if {"prompt", "completion"} <= present:
        return Schema(
            "prompt_completion",
            "prompt_completion",
            {"prompt": "prompt", "completion": "completion"},
        )
    if {"instruction", "response"} <= present:
        return Schema(
            "messages",
            "dolly",
            {"instruction": "instruction", "context": "context", "response": "response"},
        )
    if {"instruction", "output"} <= present:
        return Schema(
            "messages",
            "alpaca",
            {"instruction": "instruction", "context": "input", "response": "output"},
        )
    if "text" in present:
        return Schema("text", "text", {"text": "text"})
    raise DatasetError(
        [
            DataIssue(
                str(path),
                "missing columns: expected 'messages', 'prompt'+'completion', "
                "'instruction'+'context'+'response' or 'text' (or map columns in DatasetConfig); "
                f"found {sorted(present)}",
            )
        ]
    )


def normalise(path: Path, rows: Sequence[Mapping[str, Any]], schema: Schema) -> list[Example]:
    """Validate each row against its schema and convert it; every bad cell becomes an issue."""
    name = str(path)
    examples: list[Example] = []
    issues: list[DataIssue] = []
    for index, row in enumerate(rows, start=1):
        try:
            examples.append(_normalise_row(name, index, row, schema))
        except DatasetError as exc:
            issues.extend(exc.issues)
            if len(issues) >= MAX_ISSUES:
                break
    if issues:
        raise DatasetError(issues)
    return examples


def _string(
    name: str, index: int, row: Mapping[str, Any], column: str, *, optional: bool = False
) -> str:
    value = row.get(column)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        kind = "missing" if value is None else type(value).__name__
        raise DatasetError([DataIssue(name, f"expected a string, got {kind}", index, column)])
    if not value.strip() and not optional:
        raise DatasetError([DataIssue(name, "the value is empty", index, column)])
    return value


def _messages(name: str, index: int, value: Any, column: str) -> tuple[dict[str, str], ...]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list | tuple) or not value:
        kind = "an empty list" if isinstance(value, list | tuple) else type(value).__name__
        raise DatasetError(
            [DataIssue(name, f"expected a list of messages, got {kind}", index, column)]
        )
    out: list[dict[str, str]] = []
    for position, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise DatasetError(
                [DataIssue(name, f"message {position} is not an object", index, column)]
            )
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        role = {"human": "user", "gpt": "assistant"}.get(str(role), role)
        if role not in ROLES:
            raise DatasetError(
                [DataIssue(name, f"message {position} has unknown role {role!r}", index, column)]
            )
        if not isinstance(content, str):
            raise DatasetError(
                [
                    DataIssue(
                        name,
                        f"message {position} content must be a string, "
                        f"got {type(content).__name__}",
                        index,
                        column,
                    )
                ]
            )
        out.append({"role": str(role), "content": content})
    return tuple(out)


def _normalise_row(name: str, index: int, row: Mapping[str, Any], schema: Schema) -> Example:
    cols = schema.columns
    if schema.layout in ("messages", "sharegpt"):
        column = cols["messages"]
        messages = _messages(name, index, row.get(column), column)
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise DatasetError(
                [DataIssue(name, "the conversation has no assistant reply to learn", index, column)]
            )
        return Example("messages", name, index, messages=messages)
    if schema.layout in ("dolly", "alpaca"):
        instruction = _string(name, index, row, cols["instruction"])
        context = _string(name, index, row, cols["context"], optional=True)
        response = _string(name, index, row, cols["response"])
        user = f"{instruction}\n\n{context}" if context.strip() else instruction
        messages = ({"role": "user", "content": user}, {"role": "assistant", "content": response})
        return Example("messages", name, index, messages=messages)
    if schema.kind == "prompt_completion":
        prompt_value, completion_value = row.get(cols["prompt"]), row.get(cols["completion"])
        if isinstance(prompt_value, list) or hasattr(prompt_value, "tolist"):
            prompt_msgs = _messages(name, index, prompt_value, cols["prompt"])
            completion_msgs = _messages(name, index, completion_value, cols["completion"])
            return Example(
                "messages",
                name,
                index,
                messages=prompt_msgs + completion_msgs,
                train_from=len(prompt_msgs),
            )
        prompt = _string(name, index, row, cols["prompt"])
        completion = _string(name, index, row, cols["completion"])
        return Example("prompt_completion", name, index, prompt=prompt, completion=completion)
    return Example("text", name, index, text=_string(name, index, row, cols["text"]))


@dataclass(frozen=True)
class LoadedData:
    """Every example from every file, plus what lineage needs to know about the files."""

    examples: list[Example]
    files: list[DataFile]
    schemas: dict[str, str]


def load_examples(data_dir: Path, config: DatasetConfig) -> LoadedData:
    """Read, detect and validate all data files; raise one DatasetError with every issue."""
    examples: list[Example] = []
    files: list[DataFile] = []
    schemas: dict[str, str] = {}
    issues: list[DataIssue] = []
    for path in discover_files(data_dir, config):
        fmt = _format_of(path, config) or "json"
        try:
            rows = read_rows(path, fmt)
            columns: dict[str, None] = {}
            for row in rows[:1000]:
                columns.update(dict.fromkeys(row))
            schema = detect_schema(path, columns, config)
            examples.extend(normalise(path, rows, schema))
        except DatasetError as exc:
            issues.extend(exc.issues)
            continue
        files.append(DataFile(path, fmt, sha256_file(path), len(rows)))
        schemas[str(path)] = schema.layout
    if issues:
        raise DatasetError(issues)
    return LoadedData(examples, files, schemas)


def split(
    examples: Sequence[Example], config: DatasetConfig
) -> tuple[list[Example], list[Example]]:
    """Deterministic shuffle (seeded, unlike upstream) and train/eval split by fraction."""
    order = list(range(len(examples)))
    if config.shuffle_dataset:
        random.Random(config.shuffle_seed).shuffle(order)
    fraction = float(config.train_test_split)
    if fraction >= 1 or len(order) < 2:
        return [examples[i] for i in order], []
    n_train = min(len(order) - 1, max(1, round(len(order) * fraction)))
    return [examples[i] for i in order[:n_train]], [examples[i] for i in order[n_train:]]
