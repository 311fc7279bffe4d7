"""The events of one stream, kept in order as ready-to-send SSE frames.

A stream's generation (the greenlet that reads the model) appends to its log; each client
connection follows the log from a position. Decoupling the two is what lets a connection drop
without losing the stream, and what lets a resume replay the kept events with their original ids.
Frames are encoded once, when appended, so that followers only copy bytes.

The frames live in one growing ``bytearray`` with an array of where each starts, not as one
``bytes`` object per event: a 500-token answer kept for resume is then about its own size, not
twice it (an object header, a list slot and the allocator's rounding per event), and a follower
takes everything new as one slice.

An event's sequence number is its position: event ``<streamId>-<n>`` is position ``n``. The log
keeps at most ``max_events`` frames and ``max_bytes`` bytes: past either, the oldest are dropped
(``base`` moves on), and a resume that needs a dropped position gets :class:`EventsDropped`, so
memory stays bounded however long a stream runs and however big its events. A live follower is
never overtaken: while the slowest attached follower is ``max_events`` events or ``max_bytes``
bytes behind, ``append`` blocks, which stops the generation reading the upstream (back pressure
down to TCP) until the follower catches up or is dropped by the send timeout.
``on_append`` lets a mirror (Redis) see every event as it is added.

Followers wait on their own ``gevent.event.Event``: an append sets the events of the followers
that are waiting, so an idle stream costs no wake-ups at all; a :class:`PushWaiter`
(``direct.py``'s) is offered the frame first, and is not woken when it took it.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

from gevent.event import Event

from . import sse

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_BYTES = 1024 * 1024


class EventsDropped(Exception):
    """The events a follower asked for were dropped by the memory cap."""


class Cursor:
    """A live follower's position, which the log will not trim past."""

    __slots__ = ("position",)

    def __init__(self, position: int) -> None:
        self.position = position


class PushWaiter(Event):
    """A follower's waiter that is offered each new event before it is woken: it may send the
    frame itself, from where the generation appends, and sleep on (``direct.py``).

    A class to derive from rather than a structural Protocol: :meth:`EventLog.wake` asks every
    waiting follower for every event, and ``isinstance`` against a class is a C check where a
    runtime-checked Protocol runs Python code per attribute.
    """

    def push(self, seq: int, frame: bytes) -> bool:
        """Take event ``seq`` (``frame``) now, without blocking; False: wake the follower."""
        raise NotImplementedError


class EventLog:
    """Ordered frames of one stream plus the waiters that follow it live."""

    __slots__ = ("stream_id", "buffer", "starts", "byte_base", "base", "ended", "max_events",
                 "max_bytes", "on_append", "_waiters", "_cursors", "_space")

    def __init__(self, stream_id: int, max_events: int = DEFAULT_MAX_EVENTS,
                 on_append: Callable[[EventLog, int, bytes, bool], None] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.stream_id = stream_id
        self.buffer = bytearray()
        """The kept frames, back to back, from the absolute byte offset ``byte_base`` on (a
        dropped prefix is cut off the buffer only once it is half of it: amortized, no copy
        per event)."""
        self.starts = array("q")
        """The absolute byte offset where each kept frame starts (frame ``base + i``)."""
        self.byte_base = 0
        self.base = 0
        self.ended = False
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.on_append = on_append
        self._waiters: list[Event] = []
        self._cursors: list[Cursor] = []
        self._space: Event | None = None

    @property
    def next_seq(self) -> int:
        """The sequence number the next event will get (= the number of events so far)."""
        return self.base + len(self.starts)

    @property
    def size(self) -> int:
        """The bytes of the kept frames."""
        return self._end - self._start(0) if self.starts else 0

    @property
    def frames(self) -> list[bytes]:
        """The kept frames, one ``bytes`` each (for the mirror and the tests; followers use
        :meth:`take`)."""
        return self.read(self.base)

    @property
    def _end(self) -> int:
        return self.byte_base + len(self.buffer)

    def _start(self, index: int) -> int:
        return self.starts[index] if index < len(self.starts) else self._end

    def append(self, data: dict[str, Any], name: str | None = None, final: bool = False) -> None:
        """Add one event (``final`` marks the terminal one) and wake the followers."""
        if self.ended:
            return
        if not final and self.must_wait():
            self._wait_for_space()
        seq = self.next_seq
        frame = sse.event(f"{self.stream_id}-{seq}", data, name)
        self.starts.append(self._end)
        self.buffer += frame
        self.ended = final
        if len(self.starts) > self.max_events or self.size > self.max_bytes:
            self._trim()
        if self.on_append is not None:
            self.on_append(self, seq, frame, final)
        self.wake(seq, None if final else frame)

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

    def must_wait(self) -> bool:
        """True when an append now would wait for the slowest live follower (back pressure)."""
        return bool(self._cursors) and self._near_a_cap() and self._full()

    def _near_a_cap(self) -> bool:
        """Cheap first check, per append: while the whole log is under both caps, no follower
        can be a cap behind."""
        return len(self.starts) >= self.max_events or self.size >= self.max_bytes

    def _full(self) -> bool:
        """True while the slowest live follower is a cap's worth behind (events or bytes)."""
        slowest = min(c.position for c in self._cursors)
        index = max(0, slowest - self.base)
        return (self.next_seq - slowest >= self.max_events
                or self._end - self._start(index) >= self.max_bytes)

    def _wait_for_space(self) -> None:
        """Back pressure: wait until the slowest live follower is less than a cap behind."""
        while self._cursors and self._full():
            self._space = Event()
            try:
                self._space.wait()
            finally:
                self._space = None

    def _trim(self) -> None:
        """Drop the oldest frames past either cap, always keeping the newest one and whatever a
        live follower has not taken yet (``append`` waited for it as far as the caps say)."""
        keep_from = max(0, len(self.starts) - self.max_events)
        end = self._end
        while keep_from < len(self.starts) - 1 and end - self.starts[keep_from] > self.max_bytes:
            keep_from += 1
        if self._cursors:
            keep_from = min(keep_from, min(c.position for c in self._cursors) - self.base)
        if keep_from <= 0:
            return
        new_start = self.starts[keep_from]
        del self.starts[:keep_from]
        self.base += keep_from
        dead = new_start - self.byte_base
        if dead * 2 >= len(self.buffer):  # compact once the dropped prefix is half the buffer
            del self.buffer[:dead]
            self.byte_base = new_start

    def take(self, position: int) -> tuple[int, bytes]:
        """How many frames there are from ``position`` on, and their bytes as one chunk."""
        index = position - self.base
        if index < 0:
            raise EventsDropped(position)
        count = len(self.starts) - index
        if count <= 0:
            return 0, b""
        with memoryview(self.buffer) as view:
            return count, bytes(view[self.starts[index] - self.byte_base:])

    def read(self, position: int, limit: int | None = None) -> list[bytes]:
        """The frames from ``position`` on (at most ``limit``), one ``bytes`` each (empty when
        up to date)."""
        index = position - self.base
        if index < 0:
            raise EventsDropped(position)
        stop = len(self.starts) if limit is None else min(len(self.starts), index + limit)
        offset = self.byte_base
        with memoryview(self.buffer) as view:
            return [bytes(view[self._start(i) - offset:self._start(i + 1) - offset])
                    for i in range(index, stop)]

    def span(self, position: int, limit: int) -> tuple[bytes, list[int]]:
        """The frames from ``position`` on (at most ``limit``) back to back, and their lengths:
        what the mirror writes as one Redis entry, with no ``bytes`` object per frame."""
        index = position - self.base
        if index < 0:
            raise EventsDropped(position)
        stop = min(len(self.starts), index + limit)
        if stop <= index:
            return b"", []
        bounds = [*self.starts[index:stop], self._start(stop)]
        offset = self.byte_base
        with memoryview(self.buffer) as view:
            blob = bytes(view[bounds[0] - offset:bounds[-1] - offset])
        return blob, [b - a for a, b in zip(bounds, bounds[1:], strict=False)]

    def finished_at(self, position: int) -> bool:
        """True when a follower at ``position`` has seen the terminal event."""
        return self.ended and position >= self.next_seq

    def wake(self, seq: int = -1, frame: bytes | None = None) -> None:
        """Wake the waiting followers: for event ``seq`` (``frame``), or for no event (the
        stream's end hooks finished). A follower idle at that event may send it itself
        (``direct.py``): then it sleeps on."""
        for waiter in self._waiters:
            if frame is None or not isinstance(waiter, PushWaiter) or not waiter.push(seq, frame):
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
