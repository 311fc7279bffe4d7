"""Writes an event straight to a client that is waiting for it, from where the generation appends.

A relayed token used to cost two greenlet hand-offs besides the network: the generation appends
to the event log and wakes the connection's greenlet (a hub callback and two switches), which
takes the frame and hands it to gunicorn to frame and send. When the connection is idle, waiting
at the end of the log with nothing of its own in flight, the generation can do that last step
itself: one non-blocking ``send`` of the framed event on the client's socket, and the connection
greenlet sleeps on. Anything else goes the usual way:

* the socket cannot take the whole frame at once: what is left is handed to the connection's
  greenlet, which sends it (blocking, under the send timeout) before anything else;
* the terminal event, a ping, a first chunk (gunicorn sends the headers with it), a resume's
  replay: the connection greenlet writes them through gunicorn, as before.

Only plain HTTP/1.x on gunicorn's own socket qualifies (``Framing``): TLS, HTTP/2 or the uwsgi
protocol frame bytes differently, and a ``HEAD`` response has no body. The frames go out
exactly as gunicorn would frame them (``%X\\r\\n<data>\\r\\n`` when chunked), so the two writers
interleave on one well-formed body.
"""

from __future__ import annotations

import enum
from typing import Any

from .eventlog import Cursor, PushWaiter


class Framing(enum.Enum):
    """How gunicorn frames this response's body, hence how a direct write must."""

    CHUNKED = "chunked"  # HTTP/1.1 with no Content-Length: gunicorn's chunked encoding
    RAW = "raw"  # HTTP/1.0: the bytes as they are, the connection closes at the end


def framing_of(environ: dict[str, Any], allowed: bool) -> Framing | None:
    """The framing for direct writes to this request's client, or None for none.

    ``allowed`` says the worker serves plain HTTP/1.x (no TLS, no HTTP/2, not uwsgi): only
    gunicorn's configuration knows, so the worker sets it at start (``gunicorn.conf.py``).
    """
    if not allowed or environ.get("REQUEST_METHOD") == "HEAD" \
            or environ.get("gunicorn.socket") is None:
        return None
    protocol = environ.get("SERVER_PROTOCOL")
    if protocol == "HTTP/1.1":
        return Framing.CHUNKED
    if protocol == "HTTP/1.0":
        return Framing.RAW
    return None


class DirectFollower(PushWaiter):
    """A connection's waiter that can also take a frame itself while the connection is idle.

    ``idle`` is true only while the connection's greenlet sleeps in the log's ``wait`` with
    nothing pending; the connection's cursor holds the next event it owes its client, moved on
    by every frame sent here (so the log's back pressure sees it); ``pending`` holds the rest of
    a frame the socket took only in part.
    """

    def __init__(self, sock: Any, framing: Framing, watch: Any, cursor: Cursor) -> None:
        super().__init__()
        self.raw = getattr(sock, "_sock", sock)  # the non-blocking socket under gevent's
        self.chunked = framing is Framing.CHUNKED
        self.watch = watch
        self.cursor = cursor
        self.idle = False
        self.pending = b""

    def push(self, seq: int, frame: bytes) -> bool:
        """Send event ``seq`` now if the connection is idle at it; False: wake the connection.

        Runs where the generation appends (its greenlet, or the pump's callback in the hub),
        inside the log's append; never blocks.
        """
        if not self.idle or self.cursor.position != seq:
            return False
        data = b"%X\r\n%s\r\n" % (len(frame), frame) if self.chunked else frame
        try:
            sent = self.raw.send(data)
        except OSError:  # would block (EAGAIN), or the client is gone: its greenlet finds out
            self.idle = False
            return False
        self.cursor.position = seq + 1
        if self.watch is not None:
            self.watch.wrote = True
        if sent < len(data):
            self.pending = data[sent:]
            self.idle = False
            return False
        return True
