"""Cancellation, proved from the upstream's side: the fake upstream sees its connection close.

The contract: when the client goes away, the upstream request is closed within one second,
whether or not the upstream has sent anything yet; a client that stops reading is dropped after
AXRISI_SEND_TIMEOUT_SECONDS (2 s in these tests) of blocked writes.
"""

from __future__ import annotations

import socket
import time

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, content_of, raw_post_head
from .servers import Gunicorn
from .test_stream import run_body, unique_key


def test_drop_after_some_tokens_closes_upstream(server: Gunicorn, upstream: FakeUpstream) -> None:
    """A client gone mid-stream: the upstream connection closes within a second."""
    key = unique_key("cancel-mid")
    upstream.add_scenario(key, Scenario(tokens=[f"w{i} " for i in range(200)], delay=0.05))
    conn = SSEConnection(server.url, run_body(key))
    seen = conn.read_until(lambda e: "content" in e.json and e.json["content"].startswith("w4"))
    assert content_of(seen).startswith("w0 w1 w2 w3 w4")
    record = upstream.wait_for_request(key)
    dropped_at = conn.drop()
    assert record.wait_closed(3.0), "the upstream never saw the connection close"
    assert record.closed_at is not None and record.closed_at - dropped_at < 1.0
    assert record.tokens_sent < 200


def test_drop_before_first_token_closes_upstream(server: Gunicorn,
                                                 upstream: FakeUpstream) -> None:
    """A client gone while the upstream is silent (headers sent, no token yet) cancels it too."""
    key = unique_key("cancel-silent")
    upstream.add_scenario(key, Scenario(tokens=["never"], hang_after=0))
    conn = SSEConnection(server.url, run_body(key))
    assert "title" in next(conn.events()).json
    record = upstream.wait_for_request(key)
    time.sleep(0.3)
    dropped_at = conn.drop()
    assert record.wait_closed(3.0)
    assert record.closed_at is not None and record.closed_at - dropped_at < 1.0
    assert record.tokens_sent == 0


def test_drop_before_upstream_headers_closes_upstream(server: Gunicorn,
                                                      upstream: FakeUpstream) -> None:
    """A client gone before the upstream even sent its headers cancels the upstream request."""
    key = unique_key("cancel-noheaders")
    upstream.add_scenario(key, Scenario(tokens=["never"], header_delay=30))
    conn = SSEConnection(server.url, run_body(key))
    next(conn.events())
    record = upstream.wait_for_request(key)
    dropped_at = conn.drop()
    assert record.wait_closed(3.0)
    assert record.closed_at is not None and record.closed_at - dropped_at < 1.0


def test_drop_right_after_request(server: Gunicorn, upstream: FakeUpstream) -> None:
    """A client that sends the request and closes at once still gets its upstream cancelled."""
    key = unique_key("cancel-instant")
    upstream.add_scenario(key, Scenario(tokens=["x"] * 100, delay=0.05))
    body = (b'{"command":"summarize","text":"' + key.encode() + b'"}')
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(raw_post_head(len(body)) + body)
        record = upstream.wait_for_request(key)
    assert record.wait_closed(3.0)
    assert record.tokens_sent < 100


def test_reader_that_stops_reading_is_dropped(server: Gunicorn, upstream: FakeUpstream) -> None:
    """A client that keeps the connection but stops reading is dropped after the send timeout."""
    key = unique_key("cancel-stalled")
    big = "x" * 16_000
    upstream.add_scenario(key, Scenario(tokens=[big] * 20_000, delay=0.002))
    body = (b'{"command":"summarize","text":"' + key.encode() + b'"}')
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    try:
        sock.sendall(raw_post_head(len(body)) + body)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        record = upstream.wait_for_request(key)
        # Read nothing more. The server's buffers fill, its writes block, and after 2 s it drops us.
        assert record.wait_closed(30.0), "a stalled reader kept the upstream stream running"
        assert record.tokens_sent < 20_000
    finally:
        sock.close()


def test_server_keeps_serving_after_cancellations(server: Gunicorn,
                                                  upstream: FakeUpstream) -> None:
    """After dropped clients, the same worker streams a new request to its end."""
    key = unique_key("after-cancel")
    upstream.add_scenario(key, Scenario(tokens=["still", " here"]))
    events = SSEConnection(server.url, run_body(key)).read_all()
    assert content_of(events) == "still here"
    assert events[-1].json["done"] is True


def test_no_upstream_connection_left_behind(server: Gunicorn, upstream: FakeUpstream) -> None:
    """Ten dropped streams leave no open upstream connection behind them."""
    keys = [unique_key(f"leak{i}") for i in range(10)]
    idle_before = upstream.open_connections()
    conns = []
    for key in keys:
        upstream.add_scenario(key, Scenario(tokens=["t "] * 1000, delay=0.05))
        conn = SSEConnection(server.url, run_body(key))
        conn.read_until(lambda e: "content" in e.json)
        conns.append(conn)
    assert upstream.open_connections() >= 10
    records = [upstream.wait_for_request(key) for key in keys]
    for conn in conns:
        conn.drop()
    for record in records:
        assert record.wait_closed(3.0)
    deadline = time.monotonic() + 3
    while upstream.open_connections() > idle_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.open_connections() <= idle_before
