"""Notices a client that left, or that stopped reading, while its stream is blocked elsewhere.

A WSGI app learns of a disconnect only when it next writes, and a stream waiting for the model's
next token does not write. So each connection gets a small watcher greenlet on the client's
socket (gunicorn's gevent worker puts it in the environ as ``gunicorn.socket``):

* the socket turns readable and a peek returns EOF (or a reset): the client is gone;
* the connection greenlet has been stuck writing one chunk for ``send_timeout`` seconds: the
  client stopped reading (its window and our buffers are full).

Either way the watcher kills the connection greenlet with :class:`ClientGone`, a
``GreenletExit`` that gunicorn's gevent worker swallows quietly, so the relay generator's
``finally`` releases the stream; and it shuts the socket's read side (so that gunicorn's
keep-alive loop sees EOF instead of parsing a request from a half-written connection). The
shutdown goes to the raw socket: gevent's own ``shutdown`` would cancel a blocked ``sendall``
with EBADF, which gunicorn logs as an error with a stack trace. The watcher sleeps on libev between
events: an idle stream costs one wake-up per ``send_timeout``.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import gevent
from gevent import Greenlet, GreenletExit
from gevent.socket import wait_read


class ClientGone(GreenletExit):
    """Raised in the connection greenlet when its client left or stopped reading."""


class _Tick(Exception):
    """The watcher's own wake-up when nothing happened on the socket."""


_TICK = _Tick()


class ClientWatch:
    """One watcher per client connection."""

    __slots__ = ("sock", "target", "send_timeout", "writing_since", "reason", "_greenlet")

    def __init__(self, sock: Any, target: Greenlet | Any, send_timeout: float) -> None:
        self.sock = sock
        self.target = target
        self.send_timeout = send_timeout
        self.writing_since: float | None = None
        self.reason: str | None = None
        self._greenlet: Greenlet | None = None

    def start(self) -> None:
        """Start watching in a new greenlet."""
        self._greenlet = gevent.spawn(self._watch)

    def stop(self) -> None:
        """Stop watching (from the connection's cleanup); never blocks."""
        if self._greenlet is not None and self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)
        self._greenlet = None

    def _watch(self) -> None:
        fileno = self.sock.fileno()
        readable = True
        while self.reason is None:
            timeout = self._next_deadline()
            if readable:
                try:
                    wait_read(fileno, timeout=timeout, timeout_exc=_TICK)
                    readable = self._on_readable()
                    continue
                except _Tick:
                    pass
            else:
                gevent.sleep(timeout)
            if self._write_stalled():
                self._drop("send_timeout")

    def _next_deadline(self) -> float:
        if self.writing_since is None:
            return self.send_timeout
        return max(0.01, self.writing_since + self.send_timeout - time.monotonic())

    def _write_stalled(self) -> bool:
        since = self.writing_since
        return since is not None and time.monotonic() - since >= self.send_timeout

    def _on_readable(self) -> bool:
        """Peek: EOF or a reset means gone; data means a pipelined request, so stop reading."""
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if data:
            return False
        self._drop("client_gone")
        return True

    def _drop(self, reason: str) -> None:
        self.reason = reason
        self.target.kill(ClientGone(reason), block=False)
        try:
            getattr(self.sock, "_sock", self.sock).shutdown(socket.SHUT_RD)
        except OSError:
            pass
