"""The events of one stream, kept in order as ready-to-send SSE frames.

A stream's generation (the greenlet that reads the model) appends to its log; each client
connection follows the log from a position. Decoupling the two is what lets a connection drop
without losing the stream, and what lets a later resume replay the kept events with their
original ids. Frames are encoded once, when appended, so that followers only copy bytes.

Followers wait on their own ``gevent.event.Event``: an append sets the events of the followers
that are waiting, so an idle stream costs no wake-ups at all.
"""

from __future__ import annotations

from typing import Any

from gevent.event import Event

from . import sse


class EventLog:
    """Ordered frames of one stream plus the waiters that follow it live."""

    __slots__ = ("stream_id", "frames", "ids", "next_seq", "ended", "_waiters")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.frames: list[bytes] = []
        self.ids: list[str] = []
        self.next_seq = 0
        self.ended = False
        self._waiters: list[Event] = []

    def append(self, data: dict[str, Any], name: str | None = None, final: bool = False) -> None:
        """Add one event (``final`` marks the terminal one) and wake the followers."""
        if self.ended:
            return
        event_id = f"{self.stream_id}-{self.next_seq}"
        self.next_seq += 1
        self.frames.append(sse.event(event_id, data, name))
        self.ids.append(event_id)
        self.ended = final
        for waiter in self._waiters:
            waiter.set()

    def read(self, position: int) -> list[bytes]:
        """The frames from ``position`` on (empty when the follower is up to date)."""
        return self.frames[position:] if position < len(self.frames) else []

    def wait(self, position: int, waiter: Event, timeout: float) -> bool:
        """Block until there is a frame at ``position`` or the log ended; False on timeout."""
        if position < len(self.frames) or self.ended:
            return True
        waiter.clear()
        self._waiters.append(waiter)
        try:
            return bool(waiter.wait(timeout))
        finally:
            self._waiters.remove(waiter)
