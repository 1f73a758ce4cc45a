"""Schemathesis fuzzes every endpoint from the server's own OpenAPI schema: no 500s anywhere."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from kaito.runtime.inference import RunningServer

TINY = 3  # generated tokens per fuzzed request: the point is the status code, not the text


@pytest.fixture(scope="session")
def api_schema(server: RunningServer) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


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


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_request_makes_the_server_fail(case: Any, server: RunningServer) -> None:
    bound_generation(case.body)
    case.call_and_validate(base_url=server.url, checks=[not_a_server_error], timeout=120)
