"""The client watch on real loopback TCP sockets: a client that stops reading is dropped
``send_timeout`` after it stopped (never sooner), and clients that read are never dropped,
however slowly they read or however long they sit idle after a burst."""

from __future__ import annotations

import socket as stdsocket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
from gevent import socket

from axrisi.stream.clientwatch import SEND_BUFFER_BYTES, ClientGone, ClientWatch

SEND_TIMEOUT = 0.6


@contextmanager
def connected() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the server's side, the client's side) of one loopback TCP connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    try:
        yield server, client
    finally:
        server.close()
        client.close()


class Writer:
    """Writes to the server's side as the relay does (marking each write for the watch) until
    the watch kills it; records when and why."""

    def __init__(self, server: socket.socket, chunk: bytes, every: float,
                 send_timeout: float = SEND_TIMEOUT) -> None:
        self.server, self.chunk, self.every = server, chunk, every
        self.killed_at: float | None = None
        self.greenlet = gevent.spawn(self._run)
        self.watch = ClientWatch(server, self.greenlet, send_timeout)
        self.watch.start()

    def _run(self) -> None:
        try:
            while True:
                self.write(self.chunk)
                gevent.sleep(self.every)
        except ClientGone:
            self.killed_at = time.monotonic()

    def write(self, data: bytes) -> None:
        self.watch.writing_since = time.monotonic()
        self.watch.wrote = True
        self.server.sendall(data)
        self.watch.writing_since = None

    def stop(self) -> None:
        self.watch.stop()
        self.greenlet.kill()


def read_for(client: socket.socket, seconds: float, size: int = 65536,
             pause: float = 0.0) -> int:
    """Read whatever arrives for ``seconds`` (``size`` at a time, ``pause`` between reads)."""
    got = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with gevent.Timeout(max(0.01, deadline - time.monotonic()), False):
            got += len(client.recv(size))
        if pause:
            gevent.sleep(pause)
    return got


def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout() -> None:
    """Its kernel still takes the bytes (nothing blocks for a long while), but its window's
    edge stays put: dropped with ``send_timeout``, not before the timeout has passed."""
    with connected() as (server, client):
        writer = Writer(server, b"x" * 1024, 0.01)  # 100 KB/s
        try:
            assert read_for(client, 0.5) > 0
            stopped_reading = time.monotonic()
            writer.greenlet.join(timeout=30)
            assert writer.killed_at is not None, "a client that stopped reading was kept"
            assert writer.watch.reason == "send_timeout"
            assert writer.killed_at - stopped_reading >= SEND_TIMEOUT
        finally:
            writer.stop()


def test_a_slow_reader_that_keeps_reading_is_kept() -> None:
    """A reader slower than the stream fills the buffers but makes room all along. (A receiver
    announces room in steps of a segment, 64 KB on loopback: a reader must free that much per
    send timeout to show it reads.)"""
    send_timeout = 2.0
    with connected() as (server, client):
        writer = Writer(server, b"x" * 1024, 0.002, send_timeout)  # at most 500 KB/s offered
        try:
            got = read_for(client, 2.5 * send_timeout, size=4096, pause=0.02)  # at most 200
            assert got > 0
            assert writer.killed_at is None and writer.watch.reason is None
        finally:
            writer.stop()


def test_an_idle_reader_after_a_burst_is_kept() -> None:
    """A burst read at once, then only small pings: a window edge that stops moving because
    nothing more arrives is not a stall."""
    with connected() as (server, client):
        writer = Writer(server, b": ping\n\n", 0.1)
        try:
            writer.write(b"y" * 200_000)
            got = read_for(client, 5 * SEND_TIMEOUT)
            assert got >= 200_000
            assert writer.killed_at is None and writer.watch.reason is None
        finally:
            writer.stop()


def test_the_send_buffer_is_capped() -> None:
    """What the kernel buffers for one client is ours to bound (Linux doubles the figure)."""
    with connected() as (server, _client):
        watch = ClientWatch(server, gevent.getcurrent(), SEND_TIMEOUT)
        watch.start()
        try:
            size = server.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF)
            assert size <= 2 * SEND_BUFFER_BYTES
        finally:
            watch.stop()
