"""The events of one stream, kept in order as ready-to-send SSE frames.

A stream's generation (the greenlet that reads the model) appends to its log; each client
connection follows the log from a position. Decoupling the two is what lets a connection drop
without losing the stream, and what lets a resume replay the kept events with their original ids.
Frames are encoded once, when appended, so that followers only copy bytes.

An event's sequence number is its position: event ``<streamId>-<n>`` is position ``n``. The log
keeps at most ``max_events`` frames: past that, the oldest are dropped (``base`` moves on), and a
resume that needs a dropped position gets :class:`EventsDropped`, so memory stays bounded however
long a stream runs. A live follower is never overtaken: while the slowest attached follower is
``max_events`` behind, ``append`` blocks, which stops the generation reading the upstream (back
pressure down to TCP) until the follower catches up or is dropped by the send timeout.
``on_append`` lets a mirror (Redis) see every event as it is added.

Followers wait on their own ``gevent.event.Event``: an append sets the events of the followers
that are waiting, so an idle stream costs no wake-ups at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gevent.event import Event

from . import sse

DEFAULT_MAX_EVENTS = 10_000


class EventsDropped(Exception):
    """The events a follower asked for were dropped by the memory cap."""


class Cursor:
    """A live follower's position, which the log will not trim past."""

    __slots__ = ("position",)

    def __init__(self, position: int) -> None:
        self.position = position


class EventLog:
    """Ordered frames of one stream plus the waiters that follow it live."""

    __slots__ = ("stream_id", "frames", "base", "ended", "max_events", "size", "on_append",
                 "_waiters", "_cursors", "_space")

    def __init__(self, stream_id: int, max_events: int = DEFAULT_MAX_EVENTS,
                 on_append: Callable[[EventLog, int, bytes, bool], None] | None = None) -> None:
        self.stream_id = stream_id
        self.frames: list[bytes] = []
        self.base = 0
        self.ended = False
        self.max_events = max_events
        self.size = 0
        self.on_append = on_append
        self._waiters: list[Event] = []
        self._cursors: list[Cursor] = []
        self._space: Event | None = None

    @property
    def next_seq(self) -> int:
        """The sequence number the next event will get (= the number of events so far)."""
        return self.base + len(self.frames)

    def append(self, data: dict[str, Any], name: str | None = None, final: bool = False) -> None:
        """Add one event (``final`` marks the terminal one) and wake the followers."""
        if self.ended:
            return
        if not final and self._cursors and len(self.frames) >= self.max_events:
            self._wait_for_space()
        seq = self.next_seq
        frame = sse.event(f"{self.stream_id}-{seq}", data, name)
        self.frames.append(frame)
        self.size += len(frame)
        self.ended = final
        if len(self.frames) > self.max_events:
            self._trim()
        if self.on_append is not None:
            self.on_append(self, seq, frame, final)
        self.wake()

    def follow(self, position: int) -> Cursor:
        """Register a live follower at ``position``."""
        cursor = Cursor(position)
        self._cursors.append(cursor)
        return cursor

    def advance(self, cursor: Cursor, position: int) -> None:
        """The follower has taken everything before ``position``."""
        cursor.position = position
        if self._space is not None:
            self._space.set()

    def unfollow(self, cursor: Cursor) -> None:
        """The follower left; it no longer holds events back."""
        self._cursors.remove(cursor)
        if self._space is not None:
            self._space.set()

    def _wait_for_space(self) -> None:
        """Back pressure: wait until the slowest live follower is less than the cap behind."""
        while self._cursors and \
                self.next_seq - min(c.position for c in self._cursors) >= self.max_events:
            self._space = Event()
            try:
                self._space.wait()
            finally:
                self._space = None

    def _trim(self) -> None:
        excess = len(self.frames) - self.max_events
        self.size -= sum(len(frame) for frame in self.frames[:excess])
        del self.frames[:excess]
        self.base += excess

    def read(self, position: int) -> list[bytes]:
        """The frames from ``position`` on (empty when the follower is up to date)."""
        index = position - self.base
        if index < 0:
            raise EventsDropped(position)
        return self.frames[index:] if index < len(self.frames) else []

    def finished_at(self, position: int) -> bool:
        """True when a follower at ``position`` has seen the terminal event."""
        return self.ended and position >= self.next_seq

    def wake(self) -> None:
        """Wake the waiting followers without an event (the stream's end hooks finished)."""
        for waiter in self._waiters:
            waiter.set()

    def wait_wake(self, waiter: Event, timeout: float) -> bool:
        """Block until :meth:`wake` or an append, or ``timeout``; False on timeout."""
        waiter.clear()
        self._waiters.append(waiter)
        try:
            return bool(waiter.wait(timeout))
        finally:
            self._waiters.remove(waiter)

    def wait(self, position: int, waiter: Event, timeout: float) -> bool:
        """Block until there is a frame at ``position`` or the log ended; False on timeout."""
        if position < self.next_seq or self.ended:
            return True
        return self.wait_wake(waiter, timeout)
