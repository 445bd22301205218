"""Errors in a spec that admission cannot catch, only the operator (it needs the catalog)."""

from __future__ import annotations


class SpecError(Exception):
    """A QwenInference spec the operator cannot serve as written.

    `reason` is a CamelCase condition reason (e.g. UnknownModel); `message` says what to change.
    The reconcile turns it into Ready=False with that reason and an Event, never a retry loop.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
