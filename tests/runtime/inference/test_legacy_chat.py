"""The legacy `/chat` endpoint keeps upstream's shape and status codes, with valid JSON."""

from __future__ import annotations

import httpx

from kaito.runtime.inference import RunningServer
from tests.runtime.inference.conftest import FRANCE

GREEDY = {"do_sample": False, "max_new_tokens": 12}


def test_root_says_the_server_is_running(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/").json() == {"message": "Server is running"}


def test_prompt_returns_the_full_text_including_the_prompt(server: RunningServer) -> None:
    prompt = "The capital of France is"
    body = {"prompt": prompt, "generate_kwargs": GREEDY}
    response = httpx.post(f"{server.url}/chat", json=body, timeout=120)
    assert response.status_code == 200
    result = response.json()["Result"]
    assert result.startswith(prompt)
    assert "Paris" in result[len(prompt) :]


def test_return_full_text_false_drops_the_prompt(server: RunningServer) -> None:
    body = {"prompt": "Hello, my name is", "return_full_text": False, "generate_kwargs": GREEDY}
    result = httpx.post(f"{server.url}/chat", json=body, timeout=120).json()["Result"]
    assert result and not result.startswith("Hello, my name is")


def test_messages_get_the_assistant_reply_as_json(server: RunningServer) -> None:
    body = {"messages": [{"role": "user", "content": FRANCE}], "generate_kwargs": GREEDY}
    response = httpx.post(f"{server.url}/chat", json=body, timeout=120)
    assert response.status_code == 200
    assert "Paris" in response.json()["Result"]


def test_missing_prompt_is_a_400_with_upstreams_detail(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/chat", json={"prompt": ""})
    assert response.status_code == 400
    assert response.json() == {"detail": "Text generation parameter prompt required"}


def test_schema_violations_are_422(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/chat", json={"prompt": "x", "generate_kwargs": 5})
    assert response.status_code == 422


def test_max_length_bounds_prompt_plus_answer(server: RunningServer) -> None:
    engine = server.serving.engine
    assert engine is not None
    prompt = "Once upon a time"
    prompt_tokens = len(engine.tokenizer(prompt)["input_ids"])
    body = {
        "prompt": prompt,
        "return_full_text": False,
        "generate_kwargs": {"do_sample": False, "max_length": prompt_tokens + 6, "min_length": 0},
    }
    result = httpx.post(f"{server.url}/chat", json=body, timeout=120).json()["Result"]
    assert 0 < len(engine.tokenizer(result, add_special_tokens=False)["input_ids"]) <= 7
