"""Examples to token ids and labels: loss only on assistant replies and completions."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kaito.runtime.tuning.data import Example

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """One tokenized example; `length` is before truncation, so preflight can count losses."""

    input_ids: list[int]
    labels: list[int]
    length: int

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def load_tokenizer(model_path: str, chat_template: str | None = None, **kwargs: Any) -> Any:
    """The base model's tokenizer with a pad token and, optionally, a replacement chat template."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from kaito.runtime.chat_templates import resolve_template_path

    clean = {k: v for k, v in kwargs.items() if v is not None}
    tokenizer = AutoTokenizer.from_pretrained(model_path, **clean)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template:
        # A shipped template's name (or upstream's /workspace/chat_templates path) is a file.
        template_file = Path(resolve_template_path(chat_template))
        tokenizer.chat_template = (
            template_file.read_text(encoding="utf-8") if template_file.is_file() else chat_template
        )
    return tokenizer


def encode(
    tokenizer: Any, example: Example, max_length: int | None, *, full_sequence: bool = False
) -> Encoded:
    """Tokenize one example; labels are IGNORE_INDEX outside the parts the model should learn.

    `full_sequence` trains on every token instead (upstream's behaviour, opt-in).
    """
    if example.kind == "messages":
        ids, labels = _encode_messages(tokenizer, example)
    elif example.kind == "prompt_completion":
        prompt = list(tokenizer(example.prompt)["input_ids"])
        completion = list(tokenizer(example.completion, add_special_tokens=False)["input_ids"])
        completion = _with_eos(tokenizer, completion)
        ids = prompt + completion
        labels = [IGNORE_INDEX] * len(prompt) + completion
    else:
        ids = _with_eos(tokenizer, list(tokenizer(example.text)["input_ids"]))
        labels = list(ids)
    if full_sequence:
        labels = list(ids)
    length = len(ids)
    if max_length is not None and length > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return Encoded(ids, labels, length)


def _with_eos(tokenizer: Any, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    return [*ids, eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    return str(
        tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt
        )
    )


def _encode_messages(tokenizer: Any, example: Example) -> tuple[list[int], list[int]]:
    messages = example.messages
    text = _render(tokenizer, messages, False)
    # Character spans of the trained assistant turns: from the end of the generation prompt to
    # the end of the turn, so the end-of-turn token is learned (the model must learn to stop).
    # Rendering prefixes works for any template that renders a conversation prefix-stably,
    # which is what serving relies on too; templates with {% generation %} are not required.
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index < example.train_from:
            continue
        start_text = _render(tokenizer, messages[:index], True) if index else ""
        end_text = _render(tokenizer, messages[: index + 1], False)
        if not text.startswith(start_text) or not text.startswith(end_text):
            raise ValueError(
                f"{example.source}, row {example.row}: the chat template does not render "
                "conversations prefix-stably, so assistant turns cannot be located"
            )
        spans.append((len(start_text), len(end_text)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for position, (begin, _end) in enumerate(encoded["offset_mapping"]):
        if any(s <= begin < e for s, e in spans):
            labels[position] = ids[position]
    return ids, labels


@dataclass(frozen=True)
class TokenStats:
    """Token-length statistics over a dataset (before truncation)."""

    rows: int
    min: int
    max: int
    mean: float
    p50: int
    p95: int
    total_tokens: int
    trained_tokens: int
    truncated_rows: int
    untrainable_rows: int
    max_length: int | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def token_stats(encoded: Sequence[Encoded], max_length: int | None) -> TokenStats:
    lengths = sorted(e.length for e in encoded) or [0]
    return TokenStats(
        rows=len(encoded),
        min=lengths[0],
        max=lengths[-1],
        mean=round(statistics.fmean(lengths), 1),
        p50=lengths[len(lengths) // 2],
        p95=lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))],
        total_tokens=sum(len(e.input_ids) for e in encoded),
        trained_tokens=sum(e.trained_tokens for e in encoded),
        truncated_rows=sum(1 for e in encoded if max_length is not None and e.length > max_length),
        untrainable_rows=sum(1 for e in encoded if e.trained_tokens == 0),
        max_length=max_length,
    )
