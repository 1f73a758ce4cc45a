"""bf16 serving (what `--dtype auto` picks on a CPU with native bf16) keeps the model's quality.

bf16 cannot give fp32's exact greedy answers, so the check is on quality over a fixed prompt set:
the served bf16 model must find fp32's greedy continuations about as likely as fp32 does, its
own answers must be about as likely to fp32 as fp32's, and a LoRA adapter must still change the
answer.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from kaito.runtime.inference import RunningServer, ServerConfig, start_server
from kaito.runtime.inference.engine import load_model
from tests.runtime.inference.conftest import FRANCE, chat_ids

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
# by at most 0.045 nats, and fp32 scored bf16's own answers 0.03 nats worse on average than its
# own. A broken bf16 path (wrong packing, wrong scale) moves both by whole nats.
MAX_NLL_GAP = 0.15
MAX_ANSWER_NLL_GAP = 0.25


@pytest.fixture(scope="module")
def fp32_model(model_dir: Path) -> tuple[Any, Any]:
    return load_model(model_dir, "float32")


@pytest.fixture(scope="module")
def bf16_server(model_dir: Path, empty_adapter_dir: Path) -> Iterator[RunningServer]:
    config = ServerConfig(
        model=str(model_dir),
        served_model_name="bf16",
        host="127.0.0.1",
        port=0,
        adapter_dir=str(empty_adapter_dir),
        dtype="bfloat16",
        max_model_len=1024,
        num_threads=2,
        log_level="warning",
    )
    running = start_server(config, timeout=300, preloaded=load_model(model_dir, "bfloat16"))
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


def test_bf16_scores_fp32_answers_alike_and_its_own_answers_are_as_likely(
    fp32_model: tuple[Any, Any], bf16_server: RunningServer
) -> None:
    model, tokenizer = fp32_model
    engine = bf16_server.serving.engine
    assert engine is not None
    prompts = [chat_ids(tokenizer, question) for question in PROMPTS]
    references = [greedy_ids(model, prompt) for prompt in prompts]
    # All prompts at once: the answers come from batched, packed bf16 decoding as served.
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        served = list(pool.map(lambda p: served_text(bf16_server, p), prompts))
    gaps = [
        mean_nll(engine.base_model, prompt, reference) - mean_nll(model, prompt, reference)
        for prompt, reference in zip(prompts, references, strict=True)
    ]
    assert max(abs(gap) for gap in gaps) <= MAX_NLL_GAP, gaps
    # Greedy paths may part at near-ties; what matters is that bf16's answers are ones fp32
    # itself finds about as likely as its own.
    own = [mean_nll(model, p, r) for p, r in zip(prompts, references, strict=True)]
    theirs = [
        mean_nll(model, prompt, tokenizer(text, add_special_tokens=False)["input_ids"])
        for prompt, text in zip(prompts, served, strict=True)
    ]
    assert all(text.strip() for text in served), served
    assert sum(theirs) / len(theirs) <= sum(own) / len(own) + MAX_ANSWER_NLL_GAP, (own, theirs)


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
