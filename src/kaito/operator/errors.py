"""The one place where errors become framework behaviour (the three tiers of design.md §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import httpx
import httpx2
from lightkube import ApiError

from kaito.manifests.errors import SpecError, WaitError

RETRYABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Outcome:
    """What to do after an error: `permanent` waits for a spec change, `temporary` retries
    after `delay`, `unexpected` hands over to kopf's backoff."""

    tier: Literal["permanent", "temporary", "unexpected"]
    reason: str
    message: str
    delay: float = 0.0


def classify(error: BaseException) -> Outcome:
    if isinstance(error, SpecError):
        return Outcome("permanent", error.reason, error.message)
    if isinstance(error, WaitError):
        return Outcome("temporary", "Waiting", error.message, error.delay)
    if isinstance(error, ApiError):
        code = getattr(error.status, "code", 0) or 0
        if code in RETRYABLE_STATUS:
            # Conflicts and overload resolve themselves; re-observe and plan again.
            return Outcome("temporary", "ApiRetry", str(error), 1.0 if code == 409 else 5.0)
        if code == 422:
            return Outcome("permanent", "InvalidManifest", str(error))
    # lightkube 1.x speaks httpx2; keep httpx for anything else that talks HTTP.
    if isinstance(error, httpx.TransportError | httpx2.TransportError):
        return Outcome("temporary", "ApiUnreachable", str(error), 5.0)
    return Outcome("unexpected", type(error).__name__, str(error))
