"""The Server-Sent Events wire format: pure functions from an event to bytes.

Kept apart from the response lifecycle so that it can be tested as a table of inputs and bytes.
Every event is ``id:``, an optional ``event:``, exactly one ``data:`` line of compact JSON and a
blank line. JSON never holds a raw line break (orjson escapes ``\\n`` and ``\\r``), so one
``data:`` line always suffices; ``id`` and ``event`` values are stripped of line breaks because a
stray newline there would end the event early and corrupt the stream for the browser.
"""

from __future__ import annotations

from typing import Any

from .. import jsonutil

PING = b": ping\n\n"
"""The heartbeat comment: ignored by every SSE parser, but it keeps proxies and routers open."""


def _field_value(value: str) -> bytes:
    return value.replace("\r", "").replace("\n", "").encode()


def event(event_id: str, data: Any, name: str | None = None) -> bytes:
    """One complete event: ``id``, optional ``event`` name, one JSON ``data`` line, blank line."""
    head = b"id: " + _field_value(event_id) + b"\n"
    if name:
        head += b"event: " + _field_value(name) + b"\n"
    return head + b"data: " + jsonutil.dumps(data) + b"\n\n"


def retry(milliseconds: int) -> bytes:
    """The ``retry:`` field that tells an EventSource (and our client) how long to back off."""
    return b"retry: " + str(int(milliseconds)).encode() + b"\n\n"


def comment(text: str) -> bytes:
    """A comment line; used for the opening line and heartbeats."""
    return b": " + _field_value(text) + b"\n\n"


def parse(frame: bytes) -> tuple[str, str | None, Any]:
    """One event as :func:`event` wrote it: its id, its name (None: a plain message) and its
    data, decoded (for a snapshot, which folds kept events back into one)."""
    event_id, name, data = "", None, None
    for line in frame.split(b"\n"):
        if line.startswith(b"id: "):
            event_id = line[4:].decode()
        elif line.startswith(b"event: "):
            name = line[7:].decode()
        elif line.startswith(b"data: "):
            data = jsonutil.loads(line[6:])
    return event_id, name, data
