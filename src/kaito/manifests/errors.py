"""The errors the pure layers raise; operator/errors.py maps them to framework behaviour."""

from __future__ import annotations


class SpecError(Exception):
    """The Workspace cannot be reconciled as written (permanent until the spec changes).

    `reason` is a PascalCase condition reason; the message says what to fix.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class WaitError(Exception):
    """Something outside the controller must happen first (temporary: retry after `delay`)."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.message = message
        self.delay = delay
