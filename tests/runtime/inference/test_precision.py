"""bf16 serving (what `--dtype auto` picks on a CPU with native bf16) keeps the model's quality.

bf16 weights (batched steps) and their int8 copies (single-row steps) cannot give fp32's exact
greedy answers, so the check is on quality over a fixed prompt set: the served model must find
fp32's greedy continuations about as likely as fp32 does, its own answers must be about as
likely to fp32 as fp32's, on both paths, and a LoRA adapter must still change the answer.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from kaito.runtime.inference import RunningServer
from kaito.runtime.inference.engine import load_model
from tests.runtime.inference.conftest import FRANCE, chat_ids, serve_small_model

PROMPTS = [
    "Name three colors.",
    "What is the capital of Italy?",
    "Write one sentence about the sea.",
    "How many legs does a spider have?",
    "Give me a synonym for happy.",
    "What do bees make?",
    "Translate 'good morning' into French.",
    "Why is the sky blue?",
]
NEW_TOKENS = 24
# Measured on SmolLM2-135M: bf16 moved the mean per-token log-likelihood of fp32's greedy answers
# by at most 0.044 nats (batched) and 0.074 (int8, one row), and fp32 scored the served answers
# no worse than 0.03 nats on average than its own. A broken path (wrong packing, wrong scale)
# moves both by whole nats.
MAX_NLL_GAP = 0.15
MAX_ANSWER_NLL_GAP = 0.25


@pytest.fixture(scope="module")
def fp32_model(model_dir: Path) -> tuple[Any, Any]:
    return load_model(model_dir, "float32")


@pytest.fixture(scope="module")
def bf16_server(model_dir: Path, empty_adapter_dir: Path) -> Iterator[RunningServer]:
    running = serve_small_model(model_dir, empty_adapter_dir, "bfloat16", served_model_name="bf16")
    yield running
    running.stop()


def greedy_ids(model: Any, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    return [int(t) for t in out[0][len(prompt) :]]


def mean_nll(model: Any, prompt: list[int], answer: list[int]) -> float:
    ids = torch.tensor([prompt + answer])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    picked = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(answer)[:, None])
    return float(-picked.mean())


def stepwise_nll(model: Any, prompt: list[int], answer: list[int]) -> float:
    """`mean_nll`, but the answer is fed one token per forward pass, as single-row decoding."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    total = 0.0
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True).logits
        for token in answer:
            total -= float(torch.log_softmax(logits[0, -1].float(), dim=-1)[token])
            logits = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True).logits
    return total / len(answer)


def served_text(server: RunningServer, prompt: list[int]) -> str:
    body = {"model": "bf16", "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0}
    reply = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["text"])


def test_the_served_model_is_bf16_and_packed(bf16_server: RunningServer) -> None:
    engine = bf16_server.serving.engine
    assert engine is not None
    assert next(engine.base_model.parameters()).dtype == torch.bfloat16
    packed = [m for m in engine.base_model.modules() if type(m).__name__ == "PackedLinear"]
    assert packed or not torch.backends.mkldnn.is_available()
    assert all(m.int8_weight is not None for m in packed)


@pytest.fixture(scope="module")
def references(fp32_model: tuple[Any, Any]) -> list[tuple[list[int], list[int]]]:
    """(prompt, fp32's greedy answer) for every prompt."""
    model, tokenizer = fp32_model
    prompts = [chat_ids(tokenizer, question) for question in PROMPTS]
    return [(prompt, greedy_ids(model, prompt)) for prompt in prompts]


def test_bf16_scores_fp32_answers_alike_batched_and_one_row_at_a_time(
    fp32_model: tuple[Any, Any],
    bf16_server: RunningServer,
    references: list[tuple[list[int], list[int]]],
) -> None:
    model, _ = fp32_model
    engine = bf16_server.serving.engine
    assert engine is not None
    baseline = [mean_nll(model, prompt, answer) for prompt, answer in references]
    # Whole answers in one pass take the packed bf16 weights; one token per step the int8 ones.
    batched = [mean_nll(engine.base_model, prompt, answer) for prompt, answer in references]
    stepped = [stepwise_nll(engine.base_model, prompt, answer) for prompt, answer in references]
    for scores in (batched, stepped):
        gaps = [ours - theirs for ours, theirs in zip(scores, baseline, strict=True)]
        assert max(abs(gap) for gap in gaps) <= MAX_NLL_GAP, gaps


def test_fp32_finds_the_served_answers_about_as_likely_as_its_own(
    fp32_model: tuple[Any, Any],
    bf16_server: RunningServer,
    references: list[tuple[list[int], list[int]]],
) -> None:
    model, tokenizer = fp32_model
    prompts = [prompt for prompt, _ in references]

    def score(prompt: list[int], text: str) -> float:
        # Scored as text, tokenized afresh, on both sides: the API returns text, not token ids.
        return mean_nll(model, prompt, tokenizer(text, add_special_tokens=False)["input_ids"])

    own = [
        score(prompt, tokenizer.decode(answer, skip_special_tokens=True))
        for prompt, answer in references
    ]
    # All at once: batched decoding (bf16); one after another: single-row steps (int8).
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(lambda p: served_text(bf16_server, p), prompts))
    alone = [served_text(bf16_server, prompt) for prompt in prompts]
    # Greedy paths may part at near-ties; what matters is that the served answers are ones
    # fp32 itself finds about as likely as its own.
    for served in (together, alone):
        assert all(text.strip() for text in served), served
        theirs = [score(prompt, text) for prompt, text in zip(prompts, served, strict=True)]
        gap = (sum(theirs) - sum(own)) / len(own)
        assert gap <= MAX_ANSWER_NLL_GAP, (own, theirs, served)


def test_an_adapter_changes_the_answer_on_bf16(
    bf16_server: RunningServer, berlin_adapter: Path
) -> None:
    body = {"lora_name": "berlin", "lora_path": str(berlin_adapter)}
    assert httpx.post(f"{bf16_server.url}/v1/load_lora_adapter", json=body, timeout=120).is_success

    def ask(model: str) -> str:
        chat = {
            "model": model,
            "messages": [{"role": "user", "content": FRANCE}],
            "temperature": 0,
            "max_tokens": 12,
        }
        reply = httpx.post(f"{bf16_server.url}/v1/chat/completions", json=chat, timeout=120)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["choices"][0]["message"]["content"])

    assert "Berlin" in ask("berlin")
    assert "Paris" in ask("bf16")
