"""The tuning CLI's result line (the pusher's termination message): the pushed adapter."""

from __future__ import annotations

import json
from typing import Any

# The result document's key for the pushed adapter: {"reference": ..., "digest": ...}.
PUSHED_KEY = "pushed"


def pushed_entry(reference: str, digest: str) -> dict[str, dict[str, str]]:
    """The writer: the entry the CLI adds to its result once the adapter is pushed."""
    return {PUSHED_KEY: {"reference": reference, "digest": digest}}


def read_pushed(message: str | None) -> tuple[str, str] | None:
    """The reader: (reference, digest) from a result line, or None when it names no push.

    A reference may be missing (""), a digest may not: it is what identifies the adapter.
    """
    try:
        document: Any = json.loads(message or "")
    except ValueError:
        return None
    pushed = document.get(PUSHED_KEY) if isinstance(document, dict) else None
    if not isinstance(pushed, dict) or not isinstance(pushed.get("digest"), str):
        return None
    reference = pushed.get("reference")
    return (reference if isinstance(reference, str) else "", pushed["digest"])
