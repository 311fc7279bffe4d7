"""The client side of a stream: follow the event log and write SSE bytes, until the end.

The relay is a plain generator given everything it needs as arguments (it outlives the request
context). It yields, in order: the ``retry:`` field and every event already in the log (the
title at least) as the first chunk, so headers and a first line leave before the model answers;
then whatever the log gains, all pending frames in one write; a ``: ping`` comment after
``heartbeat`` seconds of silence; and it returns after the terminal event.

Its ``finally`` is the one place a connection's resources are released, whichever way it ends:
the terminal event was sent, the client left (the watcher's :class:`ClientGone`), the client
stopped reading (the same, after the send timeout), or gunicorn closed the iterator.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gevent
from flask import Response
from gevent.event import Event

from . import sse
from .clientwatch import ClientWatch
from .streams import Stream, StreamRegistry

RETRY_MILLISECONDS = 2000

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def sse_response(body: Iterator[bytes]) -> Response:
    """A streaming response with the contract's headers and no Content-Length."""
    response = Response(body, status=200, content_type="text/event-stream; charset=utf-8",
                        direct_passthrough=True)
    response.headers.update(SSE_HEADERS)
    return response


def relay(registry: StreamRegistry, stream: Stream, position: int, client_socket: Any,
          heartbeat: float, send_timeout: float) -> Iterator[bytes]:
    """Yield the stream's SSE bytes from ``position`` until its terminal event."""
    registry.attach(stream)
    watch = None
    if client_socket is not None:
        watch = ClientWatch(client_socket, gevent.getcurrent(), send_timeout)
        watch.start()
    try:
        for chunk in _frames(stream, position, heartbeat, sse.retry(RETRY_MILLISECONDS)):
            if watch is not None:
                watch.writing_since = time.monotonic()
            yield chunk
            if watch is not None:
                watch.writing_since = None
    finally:
        if watch is not None:
            watch.stop()
        registry.detach(stream)


def _frames(stream: Stream, position: int, heartbeat: float, opening: bytes) -> Iterator[bytes]:
    event_log = stream.log
    waiter = Event()
    pending = opening
    while True:
        frames = event_log.read(position)
        if frames:
            position += len(frames)
            yield pending + b"".join(frames)
            pending = b""
        elif pending:
            yield pending
            pending = b""
        if event_log.ended and position >= len(event_log.frames):
            return
        if not event_log.wait(position, waiter, heartbeat):
            yield sse.PING
