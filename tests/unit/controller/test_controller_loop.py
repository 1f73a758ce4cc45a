"""The per-workspace loop: error tiers decide between retrying, waiting and kopf's backoff."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from kaito.manifests.errors import SpecError
from kaito.operator.controller import Controller, sleep_until
from kaito.operator.settings import Settings
from kaito.reconcile.types import Plan
from tests.unit.controller.builders import legacy_tuning


class Stopper:
    """Stands in for kopf's DaemonStopped: falsy until set, awaitable."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()


class ScriptedController(Controller):
    """A controller whose reconcile passes follow a script of outcomes."""

    def __init__(self, script: list[BaseException | Plan], stopper: Stopper) -> None:
        super().__init__(kube=None, settings=Settings(resync_seconds=30))  # type: ignore[arg-type]
        self.script = script
        self.stopper = stopper
        self.calls: list[float] = []

    async def reconcile(self, body: Mapping[str, Any]) -> Plan:
        self.calls.append(time.monotonic())
        step = self.script.pop(0)
        if not self.script:
            self.stopper.event.set()
        if isinstance(step, BaseException):
            raise step
        return step


async def test_a_conflict_is_retried_after_a_short_delay() -> None:
    stopper = Stopper()
    conflict = ApiError(status=Status(code=409, message="conflict"))
    controller = ScriptedController([conflict, Plan()], stopper)
    await asyncio.wait_for(controller.run_loop(legacy_tuning(), stopper), timeout=10)
    assert len(controller.calls) == 2
    assert 0.5 <= controller.calls[1] - controller.calls[0] < 5


async def test_a_requeue_hint_sets_the_next_pass() -> None:
    stopper = Stopper()
    controller = ScriptedController([Plan(requeue_after=0.2), Plan()], stopper)
    await asyncio.wait_for(controller.run_loop(legacy_tuning(), stopper), timeout=10)
    assert controller.calls[1] - controller.calls[0] < 1


async def test_a_permanent_error_waits_for_a_change_not_a_timer() -> None:
    stopper = Stopper()
    controller = ScriptedController([SpecError("PresetNotFound", "x"), Plan()], stopper)
    task = asyncio.create_task(controller.run_loop(legacy_tuning(), stopper))
    await asyncio.sleep(0.5)
    assert len(controller.calls) == 1
    controller.wake("default", "workspace-tuning-phi-3")
    await asyncio.wait_for(task, timeout=10)
    assert len(controller.calls) == 2


async def test_unexpected_errors_reach_kopf() -> None:
    stopper = Stopper()
    controller = ScriptedController([RuntimeError("bug"), Plan()], stopper)
    with pytest.raises(RuntimeError):
        await controller.run_loop(legacy_tuning(), stopper)
    assert controller.stats.errors == 1
    assert ("default", "workspace-tuning-phi-3") not in controller.wakeups


async def test_sleep_until_returns_on_wake_or_stop() -> None:
    wake, stopper = asyncio.Event(), Stopper()
    wake.set()
    started = time.monotonic()
    await sleep_until(wake, stopper, 30)
    wake.clear()
    stopper.event.set()
    await sleep_until(wake, stopper, 30)
    assert time.monotonic() - started < 1
