"""The client side of a stream: follow its events and write SSE bytes, until the end.

The relays are plain generators given everything they need as arguments (they outlive the
request context). They yield, in order: the ``retry:`` field and every event already kept (for a
new stream, the title at least) as the first chunk, so headers and a first line leave before the
model answers; then whatever arrives, all pending frames in one write; a ``: ping`` comment after
``heartbeat`` seconds of silence; and they return after the terminal event.

Their ``finally`` is the one place a connection's resources are released, whichever way it ends:
the terminal event was sent, the client left (the watcher's :class:`ClientGone`), the client
stopped reading (the same, after the send timeout), or gunicorn closed the iterator.

* :func:`relay` follows a stream of this worker through its in-memory :class:`EventLog`;
* :func:`relay_remote` follows a stream of another worker or instance through the deployment's
  shared state (a :class:`~axrisi.stream.ports.RemoteEvents`: Redis in ``axrisi.shared``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
from gevent.event import Event

from . import sse
from .clientwatch import ClientWatch
from .direct import DirectFollower, Framing
from .eventlog import EventsDropped
from .ports import RemoteEvents, StreamLost
from .registry import Stream, StreamRegistry

log = logging.getLogger(__name__)

RETRY_MILLISECONDS = 2000
SETTLE_SECONDS = 1.0
"""The most a finished stream's response waits for its end hooks (Redis calls time out sooner)."""
OPENING = sse.retry(RETRY_MILLISECONDS)

@contextmanager
def _watched(client_socket: Any, send_timeout: float) -> Iterator[ClientWatch | None]:
    watch = _start_watch(client_socket, send_timeout)
    try:
        yield watch
    finally:
        if watch is not None:
            watch.stop()


def _written(chunks: Iterator[bytes], watch: ClientWatch | None) -> Iterator[bytes]:
    """Yield chunks, telling the watcher when a write is in progress (for the send timeout)."""
    if watch is None:
        yield from chunks
        return
    for chunk in chunks:
        watch.writing_since = time.monotonic()
        watch.wrote = True
        yield chunk
        watch.writing_since = None


def relay(registry: StreamRegistry, stream: Stream, position: int, client_socket: Any,
          heartbeat: float, send_timeout: float,
          on_close: Callable[[], None] | None = None,
          framing: Framing | None = None, prelude: bytes = b"") -> Iterator[bytes]:
    """Yield a local stream's SSE bytes from ``position`` until its terminal event.

    One generator, not a chain of them: it runs once per token per stream, and every generator
    level costs a resumption per token and C stack that the greenlet saves while it waits. With
    a ``framing``, the generation sends events itself while this one sleeps (``direct.py``).
    ``prelude`` goes out first (a snapshot of the events before ``position``).
    """
    registry.attach(stream)
    event_log = stream.log
    watch = _start_watch(client_socket, send_timeout)
    cursor = event_log.follow(position)
    direct = DirectFollower(client_socket, framing, watch, cursor) if framing else None
    waiter = direct if direct is not None else Event()
    pending = OPENING + prelude
    try:
        while True:
            if direct is not None:
                direct.idle = False
                position = cursor.position  # moved on by what the generation sent itself
                if direct.pending:
                    _send_rest(client_socket, direct, watch)
            try:
                count, taken = event_log.take(position)
            except EventsDropped:
                return  # cannot happen to a live follower; a resume checks its id first
            chunk = pending
            if count:
                position += count
                event_log.advance(cursor, position)
                chunk += taken
            if chunk:
                pending = b""
                if watch is not None:
                    watch.writing_since = time.monotonic()
                    watch.wrote = True
                yield chunk
                if watch is not None:
                    watch.writing_since = None
            if event_log.finished_at(position):
                _await_settled(stream, waiter)
                return
            if direct is not None:
                direct.idle = True
            if not event_log.wait(position, waiter, heartbeat):
                pending = sse.PING
    finally:
        if direct is not None:
            direct.idle = False
        event_log.unfollow(cursor)
        if watch is not None:
            watch.stop()
        registry.detach(stream)
        if on_close is not None:
            on_close()


def _send_rest(client_socket: Any, direct: DirectFollower, watch: ClientWatch | None) -> None:
    """Send what the socket did not take of a frame the generation sent (already framed)."""
    rest, direct.pending = direct.pending, b""
    if watch is not None:
        watch.writing_since = time.monotonic()
    client_socket.sendall(rest)
    if watch is not None:
        watch.writing_since = None


def _await_settled(stream: Stream, waiter: Event) -> None:
    """Hold the response's end until the stream's slot is back and its tokens are charged.

    The terminal event is already written; what waits is the end of the HTTP response. A client
    that starts its next request when the previous one ends then meets the quotas as they are
    after that stream, not before (the end hooks talk to Redis, so they finish a little later).
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while not stream.settled:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        stream.log.wait_wake(waiter, left)


def _start_watch(client_socket: Any, send_timeout: float) -> ClientWatch | None:
    if client_socket is None:
        return None
    watch = ClientWatch(client_socket, gevent.getcurrent(), send_timeout)
    watch.start()
    return watch


def relay_remote(events: RemoteEvents, stream_id: int, position: int, worker: str,
                 client_socket: Any, heartbeat: float, send_timeout: float, grace: float,
                 on_close: Callable[[], None] | None = None,
                 prelude: bytes = b"") -> Iterator[bytes]:
    """Yield another process's stream (generated by ``worker``), from ``position`` (after
    ``prelude``) until its terminal event."""
    try:
        with _watched(client_socket, send_timeout) as watch:
            yield from _written(_remote_frames(events, stream_id, position, worker, heartbeat,
                                               grace, prelude), watch)
    finally:
        if grace > 0:
            events.clear_attached(stream_id)
        if on_close is not None:
            on_close()


def _remote_frames(events: RemoteEvents, stream_id: int, position: int, worker: str,
                   heartbeat: float, grace: float, prelude: bytes) -> Iterator[bytes]:
    """The follower's frames, pings in its silences, and always a terminal event at the end:
    a stream that cannot be followed to its end (its worker or Redis gone) ends with an error
    event, never with a connection cut mid-reply."""
    attached_at = time.monotonic()
    if grace > 0:
        events.mark_attached(stream_id, grace)
    yield OPENING + prelude
    quiet_since = time.monotonic()
    try:
        for frames in events.follow(stream_id, position, worker):
            now = time.monotonic()
            if grace > 0 and now - attached_at >= grace / 3:
                attached_at = now
                events.mark_attached(stream_id, grace)
            if frames:
                position += len(frames)
                quiet_since = now
                yield b"".join(frames)
            elif now - quiet_since >= heartbeat:
                quiet_since = now
                yield sse.PING
    except StreamLost as lost:
        log.warning("a resumed stream could not be followed to its end: %s", lost)
        yield events.lost_frame(stream_id, position)
