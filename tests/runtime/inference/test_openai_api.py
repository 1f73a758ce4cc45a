"""The OpenAI API over real HTTP answers correctly, streams, counts tokens and reports errors."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from kaito.runtime.inference import RunningServer
from tests.runtime.inference.conftest import FRANCE, SERVED_NAME, chat_ids


def ask(client: Any, question: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=kwargs.pop("model", SERVED_NAME),
        messages=[{"role": "user", "content": question}],
        temperature=kwargs.pop("temperature", 0),
        max_tokens=kwargs.pop("max_tokens", 24),
        **kwargs,
    )


def test_health_reports_healthy_once_the_model_is_loaded(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "Healthy"}


def test_chat_answers_the_capital_of_france_with_usage(openai_client: Any) -> None:
    reply = ask(openai_client, FRANCE)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == SERVED_NAME
    usage = reply.usage
    assert usage.prompt_tokens > 10
    assert 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_batched_greedy_output_equals_plain_generate(
    server: RunningServer, openai_client: Any
) -> None:
    import torch

    engine = server.serving.engine
    assert engine is not None
    question = "Name three colors."
    ids = torch.tensor([chat_ids(engine.tokenizer, question)])
    with torch.inference_mode():
        out = engine.base_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False
        )
    expected = engine.tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True)
    assert ask(openai_client, question, max_tokens=20).choices[0].message.content == expected


def test_streamed_chat_equals_the_non_streamed_answer(openai_client: Any) -> None:
    whole = ask(openai_client, FRANCE).choices[0].message.content
    chunks = list(ask(openai_client, FRANCE, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stream_ends_with_done_marker(server: RunningServer) -> None:
    body = {"model": SERVED_NAME, "prompt": "Hello", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_completion_stops_at_max_tokens_with_reason_length(openai_client: Any) -> None:
    reply = openai_client.completions.create(
        model=SERVED_NAME,
        prompt="The capital of France is",
        max_tokens=5,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5
    streamed = openai_client.completions.create(
        model=SERVED_NAME,
        prompt="The capital of France is",
        max_tokens=5,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_stop_sequence_cuts_the_answer_before_it(openai_client: Any) -> None:
    reply = ask(openai_client, FRANCE, stop=["Paris"])
    assert reply.choices[0].finish_reason == "stop"
    assert "Paris" not in reply.choices[0].message.content
    assert reply.choices[0].message.content.startswith("The capital of France is")


def test_the_same_seed_gives_the_same_sampled_answer(openai_client: Any) -> None:
    first = ask(openai_client, "Tell me a fun fact.", temperature=1.0, seed=7, max_tokens=12)
    again = ask(openai_client, "Tell me a fun fact.", temperature=1.0, seed=7, max_tokens=12)
    assert first.choices[0].message.content == again.choices[0].message.content


def test_n_choices_are_returned_together(openai_client: Any) -> None:
    reply = ask(openai_client, FRANCE, n=2, max_tokens=8)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].message.content == reply.choices[1].message.content


def test_models_lists_the_served_name_with_its_context(openai_client: Any) -> None:
    models = openai_client.models.list().data
    assert models[0].id == SERVED_NAME
    assert models[0].owned_by == "kaito"


def test_unknown_model_is_a_404_in_openai_shape(openai_client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        ask(openai_client, FRANCE, model="no-such-model")
    assert "no-such-model" in raised.value.body["message"]  # type: ignore[index]


def test_a_prompt_beyond_the_context_is_refused_with_400(openai_client: Any) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024"):
        ask(openai_client, "word " * 1500)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        ask(openai_client, FRANCE, max_tokens=10**9)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"model": "smollm2"}',
        b'{"model": "smollm2", "messages": [], "max_tokens": 5}',
        b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "n": 1000}',
        b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "temperature": -1}',
    ],
)
def test_malformed_chat_requests_get_400_with_an_error_body(
    server: RunningServer, body: bytes
) -> None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"]


def test_out_of_vocabulary_token_prompts_are_refused(server: RunningServer) -> None:
    body = {"model": SERVED_NAME, "prompt": [10**8], "max_tokens": 2}
    response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == 400


def test_metrics_expose_requests_latency_first_token_and_batch_size(
    server: RunningServer, openai_client: Any
) -> None:
    ask(openai_client, FRANCE, max_tokens=4)
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        'kaito_requests_total{path="/v1/chat/completions",status="200"}',
        "kaito_request_latency_seconds_bucket",
        "kaito_time_to_first_token_seconds_count",
        "kaito_prompt_tokens_total",
        "kaito_generation_tokens_total",
        "kaito_num_requests_waiting",
        "kaito_batch_size_bucket",
    ):
        assert name in text
