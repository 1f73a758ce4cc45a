"""No secret leaves the server, bad input gets a precise 4xx, and big requests never stall it."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaito.runtime.inference import RunningServer
from kaito.runtime.inference.config import DEFAULT_MAX_BODY_BYTES
from tests.runtime.inference.conftest import SERVED_NAME, shared_app

SECRET = "hunter2-do-not-show"


def chat_body(*messages: tuple[str, str], **extra: Any) -> dict[str, Any]:
    turns = [{"role": role, "content": content} for role, content in messages]
    return {"model": SERVED_NAME, "messages": turns, "max_tokens": 2, **extra}


# ---- secrets -----------------------------------------------------------------------------------


def test_an_adapter_name_never_reads_the_environment(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAITO_PROBE_SECRET", SECRET)
    body = {"lora_name": "KAITO_PROBE_SECRET", "lora_path": "/x"}
    response = httpx.post(f"{server.url}/v1/load_lora_adapter", json=body, timeout=60)
    assert response.status_code == 400
    assert SECRET not in response.text
    assert "does not exist" in response.json()["error"]["message"]


def test_an_adapters_strength_comes_from_the_server_settings_not_the_environment(
    server: RunningServer, berlin_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("strong", "0.125")
    client: Any = shared_app(server, adapter_strengths={"tuned": 0.25})
    engine = server.serving.engine
    assert engine is not None
    try:
        for name in ("strong", "tuned"):
            body = {"lora_name": name, "lora_path": str(berlin_adapter)}
            assert client.post("/v1/load_lora_adapter", json=body).status_code == 200
        assert engine.adapters["strong"].strength == 1.0
        assert engine.adapters["tuned"].strength == 0.25
    finally:
        for name in ("strong", "tuned"):
            client.post("/v1/unload_lora_adapter", json={"lora_name": name})


@pytest.mark.parametrize("field", ["peft_type", "base_model_name_or_path", "target_modules"])
def test_refusing_an_adapter_never_quotes_its_files(
    server: RunningServer, berlin_adapter: Path, tmp_path: Path, field: str
) -> None:
    import shutil

    probe = tmp_path / "probe"
    shutil.copytree(berlin_adapter, probe)
    config = json.loads((probe / "adapter_config.json").read_text())
    config[field] = [SECRET] if field == "target_modules" else SECRET
    (probe / "adapter_config.json").write_text(json.dumps(config))
    body = {"lora_name": "probe", "lora_path": str(probe)}
    response = httpx.post(f"{server.url}/v1/load_lora_adapter", json=body, timeout=60)
    assert response.status_code == 400
    assert SECRET not in response.text


def test_the_api_key_guards_every_api_and_adapter_call_but_not_health_or_metrics(
    server: RunningServer,
) -> None:
    client: Any = shared_app(server, api_key=SECRET)
    good = {"Authorization": f"Bearer {SECRET}"}
    calls = [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", chat_body(("user", "hi"))),
        ("POST", "/v1/completions", {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 1}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/nowhere"}),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": "x"}),
        ("POST", "/chat", {"prompt": "hi", "generate_kwargs": {"max_new_tokens": 1}}),
    ]
    for method, path, body in calls:
        refused = client.request(method, path, json=body)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = client.request(method, path, json=body, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401, path
        allowed = client.request(method, path, json=body, headers=good)
        assert allowed.status_code != 401, path
    for path in ("/health", "/metrics", "/"):
        response = client.get(path)
        assert response.status_code == 200
        assert SECRET not in response.text


# ---- precise client errors ---------------------------------------------------------------------


def test_a_tokenized_prompt_of_100_ids_is_answered(server: RunningServer) -> None:
    body = {"model": SERVED_NAME, "prompt": list(range(1000, 1100)), "max_tokens": 2}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 100


def test_more_prompts_than_the_limit_are_refused_after_normalizing(server: RunningServer) -> None:
    prompts = [[1000 + i, 1001] for i in range(9)]
    body = {"model": SERVED_NAME, "prompt": prompts, "max_tokens": 1}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"
    body["prompt"] = prompts[:8]
    assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=120).status_code == 200


def test_an_unknown_role_is_refused(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(("wizard", "hi")))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0.role"
    wizard = {"messages": [{"role": "wizard", "content": "x"}]}
    assert httpx.post(f"{server.url}/chat", json=wizard).status_code == 422
    for role in ("system", "user", "assistant", "tool", "developer"):
        body = chat_body((role, "hi"), ("user", "hi"))
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200, (role, response.text)


def test_a_body_that_is_not_json_names_the_position(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b'{"model": "smollm2",,}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] is None
    assert "not valid JSON" in error["message"]
    assert "character 20" in error["message"]


def test_messages_beyond_the_limit_are_refused(server: RunningServer) -> None:
    client: Any = shared_app(server, max_messages=3)
    at_limit = chat_body(("system", "Be brief."), ("user", "hi"), ("user", "2+2?"))
    assert client.post("/v1/chat/completions", json=at_limit).status_code == 200
    past = chat_body(("system", "Be brief."), ("user", "hi"), ("assistant", "Hi."), ("user", "?"))
    response = client.post("/v1/chat/completions", json=past)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    legacy = client.post("/chat", json={"messages": past["messages"]})
    assert legacy.status_code == 400
    assert "at most 3 messages" in legacy.json()["detail"]


# ---- limits that keep the server alive ---------------------------------------------------------


def test_a_body_past_the_limit_is_413_and_one_at_the_limit_is_read(server: RunningServer) -> None:
    limit = 4096
    client: Any = shared_app(server, max_body_bytes=limit)

    def sized(size: int) -> bytes:
        # Padded in OpenAI's `user` field, which the server ignores: the prompt stays short.
        body = chat_body(("user", "hi"), user="")
        empty = len(json.dumps(body).encode())
        body["user"] = "a" * (size - empty)
        encoded = json.dumps(body).encode()
        assert len(encoded) == size
        return encoded

    headers = {"content-type": "application/json"}
    at_limit = client.post("/v1/chat/completions", content=sized(limit), headers=headers)
    assert at_limit.status_code == 200
    past = client.post("/v1/chat/completions", content=sized(limit + 1), headers=headers)
    assert past.status_code == 413
    assert "4096 bytes" in past.json()["error"]["message"]
    streamed = client.post(  # no Content-Length: counted while reading
        "/v1/chat/completions", content=iter([sized(limit + 1)]), headers=headers
    )
    assert streamed.status_code == 413
    legacy = client.post("/chat", content=b"{" + b" " * limit + b"}", headers=headers)
    assert legacy.status_code == 413
    assert "bytes" in legacy.json()["detail"]


def poll_health_while(server: RunningServer, request: Any) -> tuple[Any, list[float]]:
    """Run `request` in a thread; time /health every 50 ms until it finishes."""
    latencies = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(request)
        while not pending.done() or not latencies:
            began = time.monotonic()
            assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
            latencies.append(time.monotonic() - began)
            time.sleep(0.05)
        return pending.result(), latencies


def test_health_answers_within_a_second_while_a_maximum_size_request_is_processed(
    server: RunningServer,
) -> None:
    limit = server.serving.config.max_body_bytes
    assert limit == DEFAULT_MAX_BODY_BYTES
    body = chat_body(("user", ""))
    room = limit - len(json.dumps(body).encode())
    body["messages"][0]["content"] = ("The quick brown fox jumps over the lazy dog. " * room)[:room]
    payload = json.dumps(body).encode()
    assert len(payload) == limit
    response, latencies = poll_health_while(
        server,
        lambda: httpx.post(
            f"{server.url}/v1/chat/completions",
            content=payload,
            headers={"content-type": "application/json"},
            timeout=300,
        ),
    )
    assert response.status_code == 400  # about a million tokens: beyond the context
    assert "maximum context length" in response.json()["error"]["message"]
    assert max(latencies) < 1.0, latencies


ENCODE_S = 4.0


def test_tokenizing_runs_off_the_event_loop(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine: Any = server.serving.engine
    real_encode = engine.codec.encode

    def slow_encode(text: str, *, add_special_tokens: bool) -> list[int]:
        time.sleep(ENCODE_S)  # stands for a long prompt on a busy CPU
        return list(real_encode(text, add_special_tokens=add_special_tokens))

    monkeypatch.setattr(engine.codec, "encode", slow_encode)
    response, latencies = poll_health_while(
        server,
        lambda: httpx.post(
            f"{server.url}/v1/chat/completions", json=chat_body(("user", "hi")), timeout=120
        ),
    )
    assert response.status_code == 200
    # On the loop, the first poll would wait out the whole encoding; off it, /health keeps
    # answering (the bound leaves room for a machine that other work keeps busy).
    assert len(latencies) >= 4, latencies
    assert max(latencies) < ENCODE_S / 2, latencies
