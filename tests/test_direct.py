"""Direct writes (``stream/direct.py``): the generation sends an event itself only to a client
that is idle at exactly that event, framed as gunicorn frames the body; anything it cannot send
whole is left to the connection's greenlet, in order."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from axrisi.stream.direct import DirectFollower, Framing, framing_of
from axrisi.stream.eventlog import Cursor

Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    server, client = socket.socketpair()
    server.setblocking(False)
    yield server, client
    server.close()
    client.close()


class Watch:
    wrote = False


def test_framing_follows_the_protocol() -> None:
    environ = {"REQUEST_METHOD": "POST", "SERVER_PROTOCOL": "HTTP/1.1", "gunicorn.socket": object()}
    assert framing_of(environ, True) is Framing.CHUNKED
    assert framing_of({**environ, "SERVER_PROTOCOL": "HTTP/1.0"}, True) is Framing.RAW
    assert framing_of({**environ, "SERVER_PROTOCOL": "HTTP/2"}, True) is None
    assert framing_of({**environ, "REQUEST_METHOD": "HEAD"}, True) is None
    assert framing_of({k: v for k, v in environ.items() if k != "gunicorn.socket"}, True) is None
    assert framing_of(environ, False) is None  # TLS, HTTP/2 or uwsgi in the worker


def test_an_idle_follower_at_the_event_sends_it_chunked(pair: Pair) -> None:
    server, client = pair
    cursor, watch = Cursor(3), Watch()
    follower = DirectFollower(server, Framing.CHUNKED, watch, cursor)
    follower.idle = True
    assert follower.push(3, b"id: 1-3\ndata: {}\n\n") is True
    assert client.recv(100) == b"12\r\nid: 1-3\ndata: {}\n\n\r\n"
    assert cursor.position == 4 and watch.wrote


def test_raw_framing_sends_the_bytes_as_they_are(pair: Pair) -> None:
    server, client = pair
    follower = DirectFollower(server, Framing.RAW, None, Cursor(0))
    follower.idle = True
    assert follower.push(0, b"data: x\n\n") is True
    assert client.recv(100) == b"data: x\n\n"


def test_a_busy_or_behind_follower_is_woken_instead(pair: Pair) -> None:
    server, client = pair
    cursor = Cursor(2)
    follower = DirectFollower(server, Framing.CHUNKED, None, cursor)
    assert follower.push(2, b"x") is False  # not idle: its greenlet is writing
    follower.idle = True
    assert follower.push(5, b"x") is False  # behind: it has events 2-4 to send first
    assert cursor.position == 2
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(10)


def test_what_the_socket_does_not_take_is_left_for_the_connection(pair: Pair) -> None:
    """A full socket: the first frame goes in part (the rest pending, the follower no longer
    idle), and nothing more is sent past it."""
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    cursor = Cursor(0)
    follower = DirectFollower(server, Framing.RAW, None, cursor)
    follower.idle = True
    big = b"y" * 1_000_000
    assert follower.push(0, big) is False
    assert 0 < len(follower.pending) < len(big)
    assert cursor.position == 1 and follower.idle is False
    assert follower.push(1, b"z") is False
    client.setblocking(False)
    got = b""
    while True:
        try:
            got += client.recv(1_000_000)
        except BlockingIOError:
            break
    assert got + follower.pending == big


def test_a_full_socket_sends_nothing_and_wakes(pair: Pair) -> None:
    server, _client = pair
    while True:  # fill it
        try:
            server.send(b"f" * 65536)
        except BlockingIOError:
            break
    cursor = Cursor(0)
    follower = DirectFollower(server, Framing.RAW, None, cursor)
    follower.idle = True
    assert follower.push(0, b"frame") is False
    assert cursor.position == 0 and follower.pending == b""
