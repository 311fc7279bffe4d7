"""Notices a client that left, or that stopped reading, while its stream is blocked elsewhere.

A WSGI app learns of a disconnect only when it next writes, and a stream waiting for the model's
next token does not write. So each connection gets two libev watchers on the client's socket
(gunicorn's gevent worker puts it in the environ as ``gunicorn.socket``), run as callbacks in the
hub, with no greenlet of their own (a greenlet per stream would cost memory at 10,000 streams):

* an io watcher: the socket turns readable and a peek returns EOF (or a reset): the client is
  gone. Data instead (a pipelined request) stops the read watch;
* a repeating timer every quarter of ``send_timeout`` (at most every 2 s): the client stopped
  reading ``send_timeout`` seconds ago. A blocked write says so only once every buffer on the way
  is full (the kernel's send buffer grows to ~4 MB per socket, the client's receive buffer holds
  as much again), which at a model's pace is minutes late. So the tick asks the kernel
  (``TCP_INFO``) instead: the right edge of the window the client advertises (bytes it
  acknowledged + its window) moves only when its application reads. Bytes keep reaching the
  client's kernel, the edge stays put: nobody reads them. ``send_timeout`` of that, with at least
  ``STALL_BYTES`` unread, drops the client; a blocked write for ``send_timeout`` still does too
  (a socket that is not TCP, a kernel without ``tcpi_snd_wnd``). The client's kernel also widens
  its window as data arrives, up to its receive buffer, which moves the edge with nobody reading:
  the clock starts once that room is used (about a second at 40 KB/s on Linux's defaults). The
  window itself, which only closes while nobody reads, would tell sooner, but sampled every tick
  it cannot tell a slow reader (whose reads open it in steps) from a stopped one, and a slow
  reader is served at its pace (back pressure), never dropped.

The client socket's send buffer is capped at ``SEND_BUFFER_BYTES`` too, so that what the kernel
holds for one stalled client is bounded by us, not by ``tcp_wmem``.

Either way the watcher kills the connection greenlet with :class:`ClientGone`, a ``GreenletExit``
that gunicorn's gevent worker swallows quietly, so the relay generator's ``finally`` releases the
stream; and it shuts the socket's read side (so that gunicorn's keep-alive loop sees EOF instead
of parsing a request from a half-written connection). The shutdown and the peek go to the raw
socket: gevent's own ``shutdown`` would cancel a blocked ``sendall`` with EBADF, which gunicorn
logs as an error with a stack trace.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import gevent
from gevent import GreenletExit

_READ = 1
SEND_BUFFER_BYTES = 64 * 1024
"""The send buffer asked for each client socket (Linux doubles it for its bookkeeping): room for
seconds of tokens and a resume's replay, not the megabytes ``tcp_wmem`` would allow."""
STALL_BYTES = 8 * 1024
"""Unread bytes that count as a stall, and the edge movement that counts as reading: above the
rounding of a window scaled by up to 2^13, and far above what one window update may lag."""
MAX_TICK_SECONDS = 2.0

_TCP_INFO = struct.Struct("=120xQ16xI80xI")
"""``struct tcp_info`` (linux/tcp.h): ``tcpi_bytes_acked`` at 120, ``tcpi_notsent_bytes`` at
144, ``tcpi_snd_wnd`` (the window the peer advertises) at 228."""


class ClientGone(GreenletExit):
    """Raised in the connection greenlet when its client left or stopped reading."""


class ClientWatch:
    """One watcher per client connection."""

    __slots__ = ("raw", "target", "send_timeout", "writing_since", "wrote", "reason", "_io",
                 "_timer", "_tcp", "_edge", "_acked_at_edge", "_acked", "_unread_since")

    def __init__(self, sock: Any, target: Any, send_timeout: float) -> None:
        self.raw = getattr(sock, "_sock", sock)
        self.target = target
        self.send_timeout = send_timeout
        self.writing_since: float | None = None
        self.wrote = False
        """Set by the relay on every write: the tick asks the kernel only after writes."""
        self.reason: str | None = None
        self._io: Any = None
        self._timer: Any = None
        self._tcp = getattr(self.raw, "family", None) in (socket.AF_INET, socket.AF_INET6)
        self._edge = -1
        self._acked_at_edge = 0
        self._acked = 0
        self._unread_since: float | None = None

    def start(self) -> None:
        """Start both watchers."""
        loop = gevent.get_hub().loop
        if self._tcp:
            try:
                self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError:
                pass
        self._io = loop.io(self.raw.fileno(), _READ)
        self._io.start(self._on_readable)
        interval = min(max(0.05, self.send_timeout / 4), MAX_TICK_SECONDS)
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
        now = time.monotonic()
        since = self.writing_since
        if since is not None and now - since >= self.send_timeout:
            self._drop("send_timeout")
        elif self._tcp and (self.wrote or self._unread_since is not None):
            self.wrote = False
            if self._stalled(now):
                self._drop("send_timeout")

    def _stalled(self, now: float) -> bool:
        """True when the client's application has made no room for ``send_timeout`` while its
        kernel kept taking (or refusing) our bytes, ``STALL_BYTES`` of them at least.

        Reading shows as the window's right edge moving on. An edge that stays put while nothing
        new is acknowledged and nothing waits proves nothing (a window update is sent only with
        the next acknowledgement), so only ticks with bytes moving, or waiting, count.
        """
        try:
            info = self.raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
        except OSError:
            info = b""
        if len(info) < _TCP_INFO.size:
            self._tcp = False  # not TCP after all, or an older kernel: blocked writes only
            return False
        acked, waiting, window = _TCP_INFO.unpack(info)
        edge = acked + window
        if edge - self._edge > STALL_BYTES or self._edge < 0:
            self._edge, self._acked_at_edge, self._unread_since = edge, acked, None
            self._acked = acked
            return False
        unread = acked - self._acked_at_edge + waiting - max(0, edge - self._edge)
        moving = acked > self._acked or waiting > 0
        self._acked = acked
        if unread < STALL_BYTES or not moving:
            return False
        if self._unread_since is None:
            self._unread_since = now
            return False
        return now - self._unread_since >= self.send_timeout

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
