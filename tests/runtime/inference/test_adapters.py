"""LoRA adapters load at start and at runtime, change answers for their name only, are checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaito.runtime.inference import RunningServer
from kaito.runtime.inference.adapters import AdapterError, AdapterSpec, discover, validate
from tests.runtime.inference.conftest import FRANCE, SERVED_NAME


def answer(client: Any, model: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": FRANCE}], temperature=0, max_tokens=12
    )
    return str(reply.choices[0].message.content)


def load(server: RunningServer, name: str, path: Path) -> httpx.Response:
    body = {"lora_name": name, "lora_path": str(path)}
    return httpx.post(f"{server.url}/v1/load_lora_adapter", json=body, timeout=120)


def unload(server: RunningServer, name: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def altered_copy(source: Path, target: Path, **changes: Any) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "adapter_config.json").read_text())
    config.update(changes)
    (target / "adapter_config.json").write_text(json.dumps(config))
    return target


def test_hot_loaded_adapter_changes_the_answer_for_its_name_only(
    server: RunningServer, openai_client: Any, berlin_adapter: Path
) -> None:
    assert load(server, "berlin", berlin_adapter).status_code == 200
    try:
        ids = [m.id for m in openai_client.models.list().data]
        assert ids == [SERVED_NAME, "berlin"]
        assert openai_client.models.list().data[1].parent == SERVED_NAME
        assert "Berlin" in answer(openai_client, "berlin")
        assert "Paris" in answer(openai_client, SERVED_NAME)
    finally:
        assert unload(server, "berlin").status_code == 200
    assert [m.id for m in openai_client.models.list().data] == [SERVED_NAME]
    assert "Paris" in answer(openai_client, SERVED_NAME)


def test_one_batch_serves_base_and_adapter_requests_side_by_side(
    server: RunningServer, berlin_adapter: Path
) -> None:
    import concurrent.futures

    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    assert load(server, "berlin2", berlin_adapter).status_code == 200
    try:
        models = [SERVED_NAME, "berlin2"] * 3
        with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
            answers = list(pool.map(lambda m: answer(client, m), models))
    finally:
        unload(server, "berlin2")
    for model, text in zip(models, answers, strict=True):
        assert ("Berlin" if model == "berlin2" else "Paris") in text


def test_a_request_for_an_unloaded_adapter_is_a_404(
    server: RunningServer, openai_client: Any
) -> None:
    import openai

    with pytest.raises(openai.NotFoundError):
        answer(openai_client, "berlin-gone")
    assert unload(server, "berlin-gone").status_code == 404


def test_loading_the_same_name_twice_is_refused(
    server: RunningServer, berlin_adapter: Path
) -> None:
    assert load(server, "twice", berlin_adapter).status_code == 200
    try:
        response = load(server, "twice", berlin_adapter)
        assert response.status_code == 400
        assert "already loaded" in response.json()["error"]["message"]
    finally:
        unload(server, "twice")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"base_model_name_or_path": "meta-llama/Llama-3.1-8B"}, "another base model"),
        ({"r": 16}, "has rank 8, config declares r=16"),
        ({"target_modules": ["q_proj", "gate_projx"]}, "1 of its target modules do not exist"),
        ({"peft_type": "PREFIX_TUNING"}, "only LoRA"),
    ],
)
def test_mismatched_adapters_are_refused_with_a_clear_error(
    server: RunningServer,
    berlin_adapter: Path,
    tmp_path: Path,
    changes: dict[str, Any],
    message: str,
) -> None:
    bad = altered_copy(berlin_adapter, tmp_path / "bad", **changes)
    response = load(server, "bad", bad)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert "bad" not in [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]


def test_a_missing_adapter_directory_is_refused(server: RunningServer, tmp_path: Path) -> None:
    response = load(server, "ghost", tmp_path / "nothing-here")
    assert response.status_code == 400
    assert "does not exist" in response.json()["error"]["message"]


def test_discovery_takes_dirs_with_a_config_and_strength_from_env(
    berlin_adapter: Path, tmp_path: Path
) -> None:
    shutil.copytree(berlin_adapter, tmp_path / "b-one")
    shutil.copytree(berlin_adapter, tmp_path / "a-two")
    (tmp_path / "not-an-adapter").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    specs = discover(tmp_path, environ={"a-two": "0.5"})
    assert [(s.name, s.strength) for s in specs] == [("a-two", 0.5), ("b-one", 1.0)]
    with pytest.raises(AdapterError, match="not a number"):
        discover(tmp_path, environ={"b-one": "strong"})


def test_adapters_in_the_adapter_dir_are_served_from_the_start(
    server: RunningServer, berlin_adapter: Path, tmp_path: Path
) -> None:
    import copy
    import threading

    from kaito.runtime.inference import ServerConfig
    from kaito.runtime.inference.sampling import SamplingParams
    from kaito.runtime.inference.serving import InferenceServing
    from tests.runtime.inference.conftest import chat_ids

    engine = server.serving.engine
    assert engine is not None and not engine.adapters
    shutil.copytree(berlin_adapter, tmp_path / "berlin")
    config = ServerConfig(
        model=server.serving.config.model, served_model_name=SERVED_NAME, adapter_dir=str(tmp_path)
    )
    # A private copy of the weights: loading an adapter rewrites the layers it targets.
    serving = InferenceServing(
        config, preloaded=(copy.deepcopy(engine.base_model), engine.tokenizer)
    )
    serving.load()
    try:
        assert serving.engine is not None
        assert [m.id for m in serving.models().data] == [SERVED_NAME, "berlin"]
        done = threading.Event()
        pieces: list[str] = []

        def sink(delta: Any) -> None:
            pieces.append(delta.text)
            if delta.finish_reason is not None:
                done.set()

        serving.engine.submit(
            chat_ids(engine.tokenizer, FRANCE), SamplingParams(12, temperature=0), sink, "berlin"
        )
        assert done.wait(120)
        assert "Berlin" in "".join(pieces)
    finally:
        serving.shutdown()


def test_validate_accepts_the_adapter_it_was_trained_for(
    server: RunningServer, berlin_adapter: Path
) -> None:
    engine = server.serving.engine
    assert engine is not None
    config = validate(AdapterSpec("ok", berlin_adapter), engine.base_model, engine.base_names)
    assert config["r"] == 8
