"""Upstream faults become sanitized error events, and the worker keeps serving."""

from __future__ import annotations

import pytest

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, content_of
from .conftest import UPSTREAM_KEY
from .servers import Gunicorn
from .test_stream import run_body, unique_key


def assert_sanitized(message: str, upstream: FakeUpstream) -> None:
    """No key, no upstream address, no upstream body, no trace in a client-facing sentence."""
    for secret in (UPSTREAM_KEY, "sk-upstream-secret", "127.0.0.1", upstream.base_url,
                   "Traceback", "openai.", "httpx"):
        assert secret not in message
    assert message.endswith(".") and len(message) < 200


def error_event(events: list) -> dict:
    assert events[-1].event == "error", f"expected a terminal error event, got {events[-1]}"
    assert sum(1 for e in events if e.event == "error" or "done" in e.json) == 1
    return events[-1].json


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_http_error_from_upstream(server: Gunicorn, upstream: FakeUpstream, status: int) -> None:
    """An upstream HTTP error ends the stream with upstream_error and a sanitized sentence."""
    key = unique_key(f"status{status}")
    upstream.add_scenario(key, Scenario(status=status))
    conn = SSEConnection(server.url, run_body(key))
    events = conn.read_all()
    assert conn.status == 200
    error = error_event(events)
    assert error["code"] == "upstream_error"
    assert error["commandId"] == events[0].json["commandId"]
    assert_sanitized(error["error"], upstream)
    assert UPSTREAM_KEY.encode() not in conn.raw and b"sk-upstream-secret" not in conn.raw


def test_reset_mid_stream(server: Gunicorn, upstream: FakeUpstream) -> None:
    """A connection reset after some tokens: the tokens, then one upstream_error event."""
    key = unique_key("reset")
    upstream.add_scenario(key, Scenario(tokens=["one ", "two ", "three ", "four"],
                                        reset_after=3, delay=0.02))
    events = SSEConnection(server.url, run_body(key)).read_all()
    assert content_of(events) == "one two three "
    error = error_event(events)
    assert error["code"] == "upstream_error"
    assert_sanitized(error["error"], upstream)


def test_error_event_inside_upstream_stream(server: Gunicorn, upstream: FakeUpstream) -> None:
    """An error object in the upstream's SSE body becomes upstream_error, its text withheld."""
    key = unique_key("inband")
    upstream.add_scenario(key, Scenario(tokens=["a", "b", "c"], error_event_after=2))
    events = SSEConnection(server.url, run_body(key)).read_all()
    assert content_of(events) == "ab"
    error = error_event(events)
    assert error["code"] == "upstream_error"
    assert_sanitized(error["error"], upstream)


def test_silence_mid_stream_times_out(server: Gunicorn, upstream: FakeUpstream) -> None:
    """Silence past AXRISI_UPSTREAM_TIMEOUT_SECONDS (2 s) → upstream_timeout, upstream closed."""
    key = unique_key("silent-mid")
    upstream.add_scenario(key, Scenario(tokens=["x", "y", "z"], hang_after=2))
    conn = SSEConnection(server.url, run_body(key))
    events = conn.read_all()
    assert content_of(events) == "xy"
    assert error_event(events)["code"] == "upstream_timeout"
    assert events[-1].comments.count("ping") >= 3, "heartbeats continue while waiting"
    assert upstream.wait_for_request(key).wait_closed(2.0)


def test_silence_before_headers_times_out(server: Gunicorn, upstream: FakeUpstream) -> None:
    """An upstream that never answers at all also ends with upstream_timeout."""
    key = unique_key("silent-head")
    upstream.add_scenario(key, Scenario(tokens=["x"], header_delay=30))
    events = SSEConnection(server.url, run_body(key)).read_all()
    assert error_event(events)["code"] == "upstream_timeout"
    assert upstream.wait_for_request(key).wait_closed(2.0)


def test_unreachable_upstream(upstream: FakeUpstream) -> None:
    """A base URL where nothing listens: upstream_error, without the address in the sentence."""
    from .servers import free_port

    port = free_port()
    env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": UPSTREAM_KEY}
    with Gunicorn(env) as gunicorn:
        events = SSEConnection(gunicorn.url, run_body("x")).read_all()
    error = error_event(events)
    assert error["code"] == "upstream_error"
    assert str(port) not in error["error"]
    assert_sanitized(error["error"], upstream)


def test_stream_that_ends_without_done(server: Gunicorn, upstream: FakeUpstream) -> None:
    """A body that ends with neither [DONE] nor a finish reason is an error, not a silent cut."""
    key = unique_key("truncated")
    upstream.add_scenario(key, Scenario(tokens=["a", "b"], reset_after=2))
    events = SSEConnection(server.url, run_body(key)).read_all()
    assert error_event(events)["code"] == "upstream_error"


def test_worker_keeps_serving_after_faults(server: Gunicorn, upstream: FakeUpstream) -> None:
    """After every fault above, a normal stream still completes on the same server."""
    key = unique_key("healthy")
    upstream.add_scenario(key, Scenario(tokens=["fine"]))
    events = SSEConnection(server.url, run_body(key)).read_all()
    assert content_of(events) == "fine" and events[-1].json["done"] is True
    assert "Traceback" not in server.log()
