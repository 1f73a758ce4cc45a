"""Entry point: `kaito operator run` and `python -m kaito.operator`."""

from __future__ import annotations

import asyncio
import logging

import kopf

from kaito.operator.handlers import build_registry
from kaito.operator.settings import Settings


async def serve(settings: Settings, *, stop_flag: asyncio.Event | None = None) -> None:
    """Run the operator until stopped (signals, or `stop_flag`)."""
    registry = build_registry(settings)
    namespaces = [settings.watch_namespace] if settings.watch_namespace else []
    await kopf.operator(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        stop_flag=stop_flag,
        # The chart's liveness and readiness probes call this endpoint.
        liveness_endpoint=settings.liveness_endpoint or None,
    )


def run(settings: Settings | None = None, *, log_level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per API request drowns the operator's own messages.
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(serve(settings or Settings.from_env()))
