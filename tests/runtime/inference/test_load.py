"""Under 2,000 requests from 32 clients the server fails nothing but 429s and keeps its memory."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from kaito.runtime.inference import RunningServer
from tests.runtime.inference.conftest import SERVED_NAME, wait_until_idle

LOAD_SCRIPT = Path(__file__).parents[3] / "bench" / "inference" / "load_test.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kaito_load_test", LOAD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_thousand_requests_only_fail_with_429_and_memory_stays_flat(
    server: RunningServer,
) -> None:
    script = load_script()
    asyncio.run(script.run_load(server.url, 64, 32, 1, SERVED_NAME))  # warm-up
    gc.collect()
    before = script.rss_mib()
    result = asyncio.run(script.run_load(server.url, 2000, 32, 1, SERVED_NAME))
    gc.collect()
    after = script.rss_mib()
    statuses = result["statuses"]
    assert set(statuses) <= {"200", "429"}, statuses
    assert statuses.get("200", 0) > 0
    assert after - before < 64, f"RSS grew from {before:.0f} to {after:.0f} MiB"
    # Nothing leaked: every sequence left the engine once its reply was sent.
    wait_until_idle(server.serving.engine, timeout=10)
