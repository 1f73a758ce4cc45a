"""The operator/runtime contract: its parsers, and no module outside it restates its values."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from kaito.contract import files, inference, progress, result, training

SRC = Path(__file__).resolve().parents[2] / "src" / "kaito"
MODULES: tuple[ModuleType, ...] = (files, inference, progress, result, training)
# Contract values that are also ordinary words elsewhere, with the reason.
SHARED_WORDS = {
    "vllm": "also the name of a runtime and an engine (presets, manifests, server flags)",
    "output_dir": "TRL's own TrainingArguments field, and a key of the tuning CLI's report",
}


def contract_values() -> dict[str, str]:
    """value -> `module.NAME` for every public string constant of the contract."""
    found: dict[str, str] = {}
    for module in MODULES:
        for name, value in vars(module).items():
            if name.isupper() and isinstance(value, str) and value not in SHARED_WORDS:
                found.setdefault(value, f"{module.__name__}.{name}")
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def restatements(source: str, values: dict[str, str]) -> list[str]:
    """Each string literal (docstrings aside) equal to a contract value, or, for a path or a
    file name, containing it (as in an embedded script or a message)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    # A path or file name inside a longer text, not a piece of a longer path ("/proc/.../mnt").
    embedded = {
        value: re.compile(rf"(?<![\w./-]){re.escape(value)}(?![\w.-])")
        for value in values
        if "/" in value or "." in value
    }
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
            continue
        if id(node) in skip:
            continue
        for value, name in values.items():
            pattern = embedded.get(value)
            if node.value == value or (pattern is not None and pattern.search(node.value)):
                out.append(f"line {node.lineno}: {node.value[:60]!r} restates {name}")
    return out


def test_no_module_outside_the_contract_restates_a_contract_value() -> None:
    values = contract_values()
    offending = [
        f"{path.relative_to(SRC)} {found}"
        for path in sorted(SRC.rglob("*.py"))
        if not path.is_relative_to(SRC / "contract")
        for found in restatements(path.read_text(), values)
    ]
    assert offending == []


@pytest.mark.parametrize(
    "source",
    [
        'CONFIG = "/mnt/config/training_config.yaml"\n',
        'SCRIPT = """import x\\nx.fetch(pathlib.Path("/mnt/data"))\\n"""\n',
        'def f(d):\n    return d.get("TrainingArguments")\n',
        'MESSAGE = f"must stay under {root}, e.g. /mnt/results"\n',
    ],
)
def test_the_restatement_check_finds_a_copied_value(source: str) -> None:
    assert restatements(source, contract_values()) != []


def test_the_restatement_check_ignores_docstrings_and_the_shared_words() -> None:
    source = '"""Mounted at /mnt/config."""\nENGINE = "vllm"\nNS = "/proc/self/ns/mnt"\n'
    assert restatements(source, contract_values()) == []


def test_every_contract_value_is_checked() -> None:
    values = contract_values()
    for expected in ("/mnt/config", "training_config.yaml", "progress.json", "DataCollator"):
        assert expected in values
    assert inference.VLLM_SECTION not in values  # a shared word, see SHARED_WORDS


# Paths: what the operator mounts is what the runtimes read.


def test_config_paths_are_the_mount_and_the_file_name() -> None:
    assert f"{files.CONFIG_MOUNT}/{files.TRAINING_CONFIG_FILE}" == files.TRAINING_CONFIG_PATH
    assert f"{files.CONFIG_MOUNT}/{files.INFERENCE_CONFIG_FILE}" == files.INFERENCE_CONFIG_PATH


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("results", "/mnt/results"),
        ("/mnt/out/./x/", "/mnt/out/x"),
        ("  out ", "/mnt/out"),
        ("/mnt", None),
        ("../etc", None),
        ("/tmp/x", None),
        ("/mntx/y", None),
    ],
)
def test_a_user_path_resolves_strictly_inside_the_mount_root(
    value: str, expected: str | None
) -> None:
    assert files.under_mount_root(value) == expected


# The training config's shape.


def test_training_sections_fills_every_absent_section() -> None:
    document = {training.TOP_KEY: {training.LORA: {"r": 8}}}
    sections = training.training_sections(document)
    assert list(sections) == list(training.SECTIONS)
    assert sections[training.LORA] == {"r": 8}
    assert sections[training.MODEL] == {}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "top-level `training_config:`"),
        ({"training_config": {}, "extra": 1}, "unknown top-level key 'extra'"),
        ({"training_config": [1]}, "must be a mapping of sections"),
        ({"training_config": {"Bogus": {}}}, "unknown section training_config.Bogus"),
        ({"training_config": {"LoraConfig": 3}}, "training_config.LoraConfig must be a mapping"),
    ],
)
def test_a_malformed_training_config_names_the_offending_key(
    document: object, message: str
) -> None:
    with pytest.raises(training.TrainingConfigError, match=message.replace(".", r"\.")):
        training.training_sections(document)


def test_section_is_lenient_for_readers_that_fall_back() -> None:
    args = {"output_dir": "x"}
    assert training.section({training.TOP_KEY: {"TrainingArguments": args}}, "TrainingArguments")
    assert training.section({training.TOP_KEY: "nope"}, training.TRAINING_ARGUMENTS) == {}
    assert training.section(None, training.TRAINING_ARGUMENTS) == {}


# The `vllm:` section.


def test_vllm_section_is_the_mapping_or_empty() -> None:
    assert inference.vllm_section({"vllm": {"max-model-len": 512}}) == {"max-model-len": 512}
    assert inference.vllm_section({"other": 1}) == {}
    assert inference.vllm_section("text") == {}


def test_a_vllm_section_that_is_not_a_mapping_is_an_error() -> None:
    with pytest.raises(inference.InferenceConfigError, match="`vllm` must be a mapping"):
        inference.vllm_section({"vllm": ["max-model-len"]})


@pytest.mark.parametrize(("value", "expected"), [(512, 512), (True, None), ("512", None)])
def test_max_model_len_is_an_integer_or_nothing(value: object, expected: int | None) -> None:
    assert inference.max_model_len({inference.MAX_MODEL_LEN: value}) == expected


# progress.json: one writer, one reader.


def test_what_the_writer_writes_the_reader_reads_back() -> None:
    written = progress.Progress(phase="training", step=3, total_steps=10, loss=0.5)
    assert progress.read(written.dumps()) == {
        k: v for k, v in written.to_json().items() if v is not None
    }


def test_the_reader_drops_unknown_keys_and_wrong_types() -> None:
    text = json.dumps(
        {
            "phase": "dancing",
            "step": True,
            "total_steps": 4.0,
            "epoch": 2,
            "loss": "low",
            "message": "ok",
            "extra": 1,
        }
    )
    assert progress.read(text) == {"epoch": 2, "message": "ok"}


@pytest.mark.parametrize("text", [None, "", "not json", "[1]", '"text"'])
def test_the_reader_answers_none_for_what_is_not_a_document(text: str | None) -> None:
    assert progress.read(text) is None


def test_the_reader_drops_non_finite_numbers() -> None:
    assert progress.read('{"eta_seconds": Infinity, "loss": NaN, "step": 1}') == {"step": 1}


def test_phases_are_the_literal_type() -> None:
    assert progress.PHASES[0] == "preparing" and "completed" in progress.PHASES
    assert progress.Progress().phase in progress.PHASES


# The pusher's result line.


def test_the_pushed_entry_reads_back_from_a_result_line() -> None:
    line = json.dumps({"ok": True, **result.pushed_entry("r.io/a:1", "sha256:" + "ab" * 32)})
    assert result.read_pushed(line) == ("r.io/a:1", "sha256:" + "ab" * 32)


@pytest.mark.parametrize(
    "message",
    [None, "", "Error: killed", '{"ok": true}', '{"pushed": {"reference": "r.io/a:1"}}', "[1]"],
)
def test_a_line_without_a_pushed_digest_names_no_adapter(message: str | None) -> None:
    assert result.read_pushed(message) is None


def test_a_pushed_digest_without_a_reference_still_counts() -> None:
    assert result.read_pushed('{"pushed": {"digest": "sha256:x", "reference": 3}}') == (
        "",
        "sha256:x",
    )
