"""Schemathesis fuzzes every endpoint from the server's own OpenAPI schema: no 500s anywhere."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from kaito.runtime.inference import RunningServer

TINY = 3  # generated tokens per fuzzed request: the point is the status code, not the text
EXAMPLES = 10  # per operation and mode; 9 operations x 2 modes


def bound_generation(body: Any) -> None:
    """Keep fuzzed requests short; values beyond the context still reach the server unchanged."""
    if not isinstance(body, dict):
        return
    if body.get("max_tokens") is None or (
        isinstance(body["max_tokens"], int) and 0 < body["max_tokens"] <= 1024
    ):
        body["max_tokens"] = TINY
    body.pop("max_completion_tokens", None)
    kwargs = body.get("generate_kwargs")
    if isinstance(kwargs, dict):
        kwargs["max_new_tokens"] = TINY
    elif "generate_kwargs" not in body and "model" not in body:  # a legacy /chat body
        body["generate_kwargs"] = {"max_new_tokens": TINY}


def operations(url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    found = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err fails the test right here
        found.append(operation)
    return found


def fuzz(operation: Any, mode: GenerationMode, url: str, failures: list[str]) -> Any:
    """A hypothesis test for one operation that records every 5xx answer."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def probe(case: Any) -> None:
        bound_generation(case.body)
        response = case.call(base_url=url, timeout=120)
        if response.status_code >= 500:
            failures.append(
                f"{operation.method.upper()} {operation.path} body={case.body!r} -> "
                f"{response.status_code} {response.text[:300]}"
            )

    return probe


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_makes_the_server_fail(
    server: RunningServer, mode: GenerationMode
) -> None:
    found = operations(server.url)
    assert {op.path for op in found} >= {"/v1/chat/completions", "/v1/completions", "/chat"}
    failures: list[str] = []
    for operation in found:
        if mode == GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing to break: these operations take no input
        fuzz(operation, mode, server.url, failures)()
    assert not failures, "\n".join(failures)
