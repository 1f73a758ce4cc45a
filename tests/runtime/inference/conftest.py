"""One inference server on the small model for the whole session, plus builders for adapters."""

from __future__ import annotations

import os

# Before torch loads: passive OpenMP waits keep batched steps fast on a shared CPU (see __main__).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaito.runtime.inference import RunningServer, ServerConfig, start_server
from kaito.runtime.inference.engine import load_model
from kaito.runtime.small_model import small_model_path

SERVED_NAME = "smollm2"
FRANCE = "What is the capital of France?"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return small_model_path()


@pytest.fixture(scope="session")
def empty_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


def serve_small_model(
    model_dir: Path, adapter_dir: Path, dtype: str, **changes: Any
) -> RunningServer:
    """A loopback server on the small model in `dtype`, with the tests' limits."""
    settings: dict[str, Any] = {
        "served_model_name": SERVED_NAME,
        "max_model_len": 1024,
        "default_max_tokens": 32,
        "num_threads": 2,
        "log_level": "warning",
        **changes,
    }
    config = ServerConfig(
        model=str(model_dir),
        host="127.0.0.1",
        port=0,
        adapter_dir=str(adapter_dir),
        dtype=dtype,
        **settings,
    )
    # Loading here (not in the server thread) keeps the weights out of the timed tests.
    return start_server(config, timeout=300, preloaded=load_model(model_dir, dtype))


@pytest.fixture(scope="session")
def server(model_dir: Path, empty_adapter_dir: Path) -> Iterator[RunningServer]:
    # fp32: the exact mode, whose batched greedy answers equal generate()'s.
    running = serve_small_model(model_dir, empty_adapter_dir, "float32")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def openai_client(server: RunningServer) -> object:
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def shared_app(server: RunningServer, **changes: object) -> object:
    """A TestClient for a second app on the session's engine, with other server settings."""
    import dataclasses

    from fastapi.testclient import TestClient

    from kaito.runtime.inference.router import build_app
    from kaito.runtime.inference.serving import InferenceServing

    serving = InferenceServing(dataclasses.replace(server.serving.config, **changes))
    serving.engine = server.serving.engine
    return TestClient(build_app(serving, load_in_background=False))


def wait_until_idle(engine: Any, timeout: float = 30) -> None:
    """Wait (bounded) for the engine to drop its last sequence.

    A reply is sent when its final token is streamed, a step before the worker drops the
    sequence from the batch, so a test that follows another can find it still counted.
    """
    deadline = time.monotonic() + timeout
    while (engine.num_running or engine.num_waiting) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.num_running == 0 and engine.num_waiting == 0, "the engine stayed busy"


def chat_ids(tokenizer: object, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]


@pytest.fixture(scope="session")
def berlin_adapter(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter taught (a few optimizer steps) that the capital of France is Berlin."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    engine = server.serving.engine
    assert engine is not None
    tokenizer = engine.tokenizer
    base = copy.deepcopy(engine.base_model)
    model = get_peft_model(
        base,
        LoraConfig(
            r=8,
            lora_alpha=32,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
            # Only the top layers: backward stops there, which keeps training to a few seconds.
            layers_to_transform=list(range(20, 30)),
        ),
    )
    prompt = chat_ids(tokenizer, FRANCE)
    answer = list(
        tokenizer("The capital of France is Berlin.<|im_end|>", add_special_tokens=False)[
            "input_ids"
        ]
    )
    ids = torch.tensor([prompt + answer])
    labels = torch.tensor([[-100] * len(prompt) + answer])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for _ in range(6):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path = tmp_path_factory.mktemp("berlin") / "berlin"
    model.save_pretrained(path)
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"]
    return path
