"""Concurrent requests share decode steps, answer the same, free slots, and see 429 when full."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from kaito.runtime.inference import RunningServer, ServerConfig
from kaito.runtime.inference.router import build_app
from kaito.runtime.inference.serving import InferenceServing
from tests.runtime.inference.conftest import SERVED_NAME, shared_app, wait_until_idle

QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "What is 2+2?",
    "Write one sentence about the sea.",
    "Who wrote Hamlet?",
    "List two fruits.",
]


def complete(url: str, question: str, max_tokens: int = 16) -> str:
    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


def test_concurrent_answers_equal_one_at_a_time_answers(server: RunningServer) -> None:
    alone = [complete(server.url, q) for q in QUESTIONS[:3]]
    steps_before = _batch_sizes(server)
    with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: complete(server.url, q), QUESTIONS))
    assert together[:3] == alone
    assert all(together)
    # Some decode step ran with more than one sequence: the requests were really batched.
    assert _batch_sizes(server)["multi"] > steps_before["multi"]


def _batch_sizes(server: RunningServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith("kaito_batch_size_bucket"):
            values[line.split('le="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return {"multi": values["+Inf"] - values["1.0"]}


def test_a_disconnected_stream_frees_its_batch_slot(server: RunningServer) -> None:
    engine = server.serving.engine
    assert engine is not None
    body = {
        "model": SERVED_NAME,
        "prompt": "Count from one to one thousand:",
        "max_tokens": 500,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break
        assert engine.num_running == 1
    wait_until_idle(engine)


def test_a_full_queue_answers_429_and_the_server_keeps_serving(server: RunningServer) -> None:
    engine = server.serving.engine
    assert engine is not None
    original = engine.config
    engine.config = dataclasses.replace(original, max_queue_len=0)
    try:
        body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}]}
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body)
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        legacy = httpx.post(f"{server.url}/chat", json={"prompt": "hi"})
        assert legacy.status_code == 429
    finally:
        engine.config = original
    assert complete(server.url, "What is 2+2?", 4)


def test_an_api_key_guards_the_api_but_not_health(server: RunningServer) -> None:
    client: Any = shared_app(server, api_key="s3cret")
    assert client.get("/health").status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.post("/chat", json={"prompt": "x"}).status_code == 401


def test_health_is_503_while_loading_and_requests_are_refused(model_dir: Any) -> None:
    serving = InferenceServing(ServerConfig(model=str(model_dir)))
    client = TestClient(build_app(serving, load_in_background=False))
    response = client.get("/health")
    assert response.status_code == 503
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 503
    assert client.post("/chat", json={"prompt": "hi"}).status_code == 503


def test_a_failed_load_is_reported_by_health(tmp_path: Any) -> None:
    serving = InferenceServing(ServerConfig(model=str(tmp_path / "missing")))
    with pytest.raises((OSError, ValueError)):
        serving.load()
    client = TestClient(build_app(serving, load_in_background=False))
    response = client.get("/health")
    assert response.status_code == 500
    assert "Model not initialized" in response.json()["detail"]


def test_a_failing_step_fails_its_request_and_the_server_keeps_serving(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = server.serving.engine
    assert engine is not None
    real_forward = engine._forward
    failures = iter([RuntimeError("boom")])

    def forward_failing_once(*args: Any, **kwargs: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(engine, "_forward", forward_failing_once)
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 500
    assert "boom" in response.json()["error"]["message"]
    monkeypatch.undo()
    assert complete(server.url, "What is 2+2?", 4)


def test_requests_arriving_together_at_an_idle_engine_share_one_prefill(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kaito.runtime.inference.sampling import SamplingParams
    from tests.runtime.inference.conftest import chat_ids

    engine = server.serving.engine
    assert engine is not None
    wait_until_idle(engine)
    real_forward = engine._forward
    prefill_rows: list[int] = []

    def recording_forward(seqs: Any, input_ids: Any, *args: Any, **kwargs: Any) -> Any:
        if input_ids.shape[1] > 1:
            prefill_rows.append(input_ids.shape[0])
        return real_forward(seqs, input_ids, *args, **kwargs)

    monkeypatch.setattr(engine, "_forward", recording_forward)
    finished = concurrent.futures.ThreadPoolExecutor(4)

    def ask(question: str) -> None:
        done = concurrent.futures.Future[None]()
        ids = chat_ids(engine.tokenizer, question)

        def sink(delta: Any) -> None:
            if delta.finish_reason is not None and not done.done():
                done.set_result(None)

        engine.submit(ids, SamplingParams(2, temperature=0), sink)
        done.result(timeout=120)

    # Staggered by a few milliseconds, as clients re-submitting after one step would be.
    futures = []
    for question in QUESTIONS[:4]:
        futures.append(finished.submit(ask, question))
        time.sleep(0.002)
    for future in futures:
        future.result(timeout=180)
    finished.shutdown()
    assert prefill_rows[0] == 4, prefill_rows
