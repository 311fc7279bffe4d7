"""Notices a client that left, or that stopped reading, while its stream is blocked elsewhere.

A WSGI app learns of a disconnect only when it next writes, and a stream waiting for the model's
next token does not write. So each connection gets two libev watchers on the client's socket
(gunicorn's gevent worker puts it in the environ as ``gunicorn.socket``), run as callbacks in the
hub, with no greenlet of their own (a greenlet per stream would cost memory at 10,000 streams):

* an io watcher: the socket turns readable and a peek returns EOF (or a reset): the client is
  gone. Data instead (a pipelined request) stops the read watch;
* a repeating timer every quarter of ``send_timeout``: the connection greenlet has been stuck
  writing one chunk for ``send_timeout`` seconds: the client stopped reading.

Either way the watcher kills the connection greenlet with :class:`ClientGone`, a ``GreenletExit``
that gunicorn's gevent worker swallows quietly, so the relay generator's ``finally`` releases the
stream; and it shuts the socket's read side (so that gunicorn's keep-alive loop sees EOF instead
of parsing a request from a half-written connection). The shutdown and the peek go to the raw
socket: gevent's own ``shutdown`` would cancel a blocked ``sendall`` with EBADF, which gunicorn
logs as an error with a stack trace.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import gevent
from gevent import GreenletExit

_READ = 1


class ClientGone(GreenletExit):
    """Raised in the connection greenlet when its client left or stopped reading."""


class ClientWatch:
    """One watcher per client connection."""

    __slots__ = ("raw", "target", "send_timeout", "writing_since", "reason", "_io", "_timer")

    def __init__(self, sock: Any, target: Any, send_timeout: float) -> None:
        self.raw = getattr(sock, "_sock", sock)
        self.target = target
        self.send_timeout = send_timeout
        self.writing_since: float | None = None
        self.reason: str | None = None
        self._io: Any = None
        self._timer: Any = None

    def start(self) -> None:
        """Start both watchers."""
        loop = gevent.get_hub().loop
        self._io = loop.io(self.raw.fileno(), _READ)
        self._io.start(self._on_readable)
        interval = max(0.05, self.send_timeout / 4)
        self._timer = loop.timer(interval, interval)
        self._timer.start(self._on_tick)

    def stop(self) -> None:
        """Stop watching (from the connection's cleanup)."""
        for watcher in (self._io, self._timer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._io = self._timer = None

    def _on_readable(self) -> None:
        """Peek: EOF or a reset means gone; data means a pipelined request, so stop reading."""
        try:
            data = self.raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._io.stop()
            return
        self._drop("client_gone")

    def _on_tick(self) -> None:
        since = self.writing_since
        if since is not None and time.monotonic() - since >= self.send_timeout:
            self._drop("send_timeout")

    def _drop(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self.stop()
        self.target.kill(ClientGone(reason), block=False)
        try:
            self.raw.shutdown(socket.SHUT_RD)
        except OSError:
            pass
