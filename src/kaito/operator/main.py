"""Entry point: `kaito operator run` and `python -m kaito.operator`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import kopf

from kaito.k8s.lease import LeaseStore
from kaito.operator.handlers import build_registry
from kaito.operator.leader import LeaderElector, default_identity
from kaito.operator.settings import Settings

log = logging.getLogger("kaito.operator")


def _exit_now() -> None:
    """Leadership lost: exit at once so Kubernetes restarts the pod as a standby.

    A graceful kopf shutdown waits for daemons (up to their cancellation timeout) and could
    still be writing when a standby takes over; the renew deadline leaves only
    lease duration - renew deadline (5 s by default) before that may happen.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


async def _kopf(
    settings: Settings,
    registry: kopf.OperatorRegistry,
    *,
    stop_flag: asyncio.Event | None,
    liveness: bool,
    ready_flag: asyncio.Event | None = None,
) -> None:
    namespaces = [settings.watch_namespace] if settings.watch_namespace else []
    await kopf.operator(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        # The chart's liveness and readiness probes call this endpoint.
        liveness_endpoint=(settings.liveness_endpoint or None) if liveness else None,
    )


def _trap_signals(stopping: asyncio.Event) -> None:
    """SIGINT/SIGTERM set `stopping` instead of stopping whichever kopf operator started last.

    Each kopf operator installs its own handlers when it starts, replacing the previous ones;
    this runs after each start so that the process stops in order: reconciliation first (and
    the Lease is released), admission last.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Outside the main thread (tests) signals cannot be trapped; kopf says so too.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stopping.set)


async def serve(
    settings: Settings,
    *,
    stop_flag: asyncio.Event | None = None,
    on_lost: Callable[[], None] = _exit_now,
) -> None:
    """Run the operator until stopped (signals, or `stop_flag`).

    Without leader election one kopf operator does everything. With it, the admission webhook
    and the health endpoint run at once on every replica, and reconciliation starts only once
    this process holds the Lease; `on_lost` runs if it stops holding it.
    """
    if not settings.leader_election:
        await _kopf(settings, build_registry(settings), stop_flag=stop_flag, liveness=True)
        return

    store = LeaseStore.from_env(settings.lease_namespace, settings.leader_election_name)
    elector = LeaderElector(
        store,
        identity=settings.leader_election_identity or default_identity(),
        lease_duration_s=settings.leader_election_lease_duration,
        renew_deadline_s=settings.leader_election_renew_deadline,
        retry_period_s=settings.leader_election_retry_period,
    )
    stopping = asyncio.Event()
    front_stop, back_stop = asyncio.Event(), asyncio.Event()
    front_ready, back_ready = asyncio.Event(), asyncio.Event()

    async def lead() -> None:
        await front_ready.wait()
        _trap_signals(stopping)
        await elector.acquire()
        back = asyncio.create_task(
            _kopf(
                settings,
                build_registry(settings, admission=False),
                stop_flag=back_stop,
                liveness=False,
                ready_flag=back_ready,
            ),
            name="kaito reconcile",
        )
        holding = asyncio.create_task(elector.hold(), name="kaito lease renewal")
        retrap = asyncio.create_task(back_ready.wait())
        retrap.add_done_callback(lambda _: _trap_signals(stopping))
        try:
            await asyncio.wait({back, holding}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if holding.done() and not holding.cancelled() and not back.done():
                on_lost()
            holding.cancel()
            retrap.cancel()
            back_stop.set()
            # kopf's own shutdown stops the daemons; only then may a standby take over.
            try:
                await back
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("reconciliation stopped with an error")
            await elector.release()

    # Created before the admission operator starts: kopf cancels, when it stops, every task
    # created after its start ("hung" tasks), and this one must outlive it.
    leading = asyncio.create_task(lead(), name="kaito leader election")
    stopper = asyncio.create_task(stopping.wait())
    waits: set[asyncio.Future[Any]] = {leading, stopper}
    if stop_flag is not None:
        waits.add(asyncio.create_task(stop_flag.wait()))
    front = asyncio.create_task(
        _kopf(
            settings,
            build_registry(settings, reconcile=False),
            stop_flag=front_stop,
            liveness=True,
            ready_flag=front_ready,
        ),
        name="kaito admission",
    )
    waits.add(front)
    try:
        # Whichever ends first (a signal, lost leadership, the caller's stop flag, either kopf
        # operator) ends the whole process.
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # A standby stops trying; a leader stops kopf, then releases the Lease (lead's finally).
        leading.cancel()
        error: Exception | None = None
        try:
            await leading
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # stop the webhook first, then fail with it
            error = exc
        front_stop.set()
        await front
        for waiter in waits:
            waiter.cancel()
        await store.close()
        if error is not None:
            raise error


def run(settings: Settings | None = None, *, log_level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per API request drowns the operator's own messages.
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(serve(settings or Settings.from_env()))
