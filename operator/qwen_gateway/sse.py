"""Server-sent events from vLLM (pure): split a byte stream into events as it arrives, find the usage.

vLLM (and OpenAI) send `data: {json}\n\n` events and `data: [DONE]\n\n` last. With
stream_options.include_usage the last JSON event has `"choices": []` and the request's usage.
"""

from __future__ import annotations

import json


class EventSplitter:
    """Feed bytes, get complete events back (each with its blank-line terminator); keeps only the partial tail."""

    def __init__(self, max_event: int = 1 << 20):
        self.tail = b""
        self.max_event = max_event

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self.tail + chunk if self.tail else chunk
        events = []
        start = 0
        while True:
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            events.append(data[start:end + 2])
            start = end + 2
        self.tail = data[start:]
        if len(self.tail) > self.max_event:
            raise ValueError(f"an event longer than {self.max_event} bytes")
        return events


def usage_of(event: bytes) -> tuple[dict | None, bool]:
    """(usage, whether this is the usage-only event: no choices). Parses JSON only for events that carry usage."""
    if b'"usage"' not in event or not event.startswith(b"data:"):
        return None, False
    payload = event[5:].strip()
    try:
        value = json.loads(payload)
    except ValueError:
        return None, False
    if not isinstance(value, dict):
        return None, False
    usage = value.get("usage")
    if not isinstance(usage, dict):
        return None, False
    return usage, not value.get("choices")


def tokens(usage: dict | None) -> tuple[int, int]:
    """(prompt, completion) tokens from an OpenAI usage object; 0 for what is missing or not a number."""
    if not isinstance(usage, dict):
        return 0, 0

    def number(field: str) -> int:
        value = usage.get(field)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else 0

    return number("prompt_tokens"), number("completion_tokens")


def error_event(message: str, code: str = "upstream_error") -> bytes:
    return b"data: " + json.dumps({"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}).encode() + b"\n\n"
