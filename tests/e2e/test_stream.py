"""The stream's framing and content, end to end: gunicorn + gevent against the fake upstream."""

from __future__ import annotations

import re
import time
import uuid

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, content_of
from .servers import Gunicorn

AWKWARD_TOKENS = [
    "Héllo", " wörld", " 😀", "👩‍💻", "\n", "line\r\nbreak", "\n\n", "data: not an event",
    "\n\nid: 99\n", ": comment?", "event: error", " \"quoted\"", " back\\slash", "\u2028",
    "中文", "\t", "\x00nul", "end",
]


def unique_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run_body(key: str, **extra: str) -> dict[str, str]:
    return {"command": "summarize", "text": f"Some page text {key}.", **extra}


def test_headers_and_framing(server: Gunicorn, upstream: FakeUpstream) -> None:
    """200 with the SSE headers, no Content-Length, a title event, contents, one done event."""
    key = unique_key("framing")
    upstream.add_scenario(key, Scenario(tokens=["##", " Overview", " done"], usage=(42, 3)))
    conn = SSEConnection(server.url, run_body(key, title="the Minisforum UM870 Mini PC"))
    events = conn.read_all()
    assert conn.status == 200
    assert conn.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert conn.headers["Cache-Control"] == "no-cache"
    assert conn.headers["X-Accel-Buffering"] == "no"
    assert conn.headers.get("Content-Length") is None
    first = events[0].json
    assert first == {"title": "Summary of the Minisforum UM870 Mini PC",
                     "commandId": first["commandId"]}
    command_id = first["commandId"]
    assert isinstance(command_id, int) and abs(command_id - time.time() * 1000) < 60_000
    assert content_of(events) == "## Overview done"
    last = events[-1]
    assert last.event == "message"
    assert last.json["done"] is True and last.json["commandId"] == command_id
    assert last.json["finishReason"] == "stop"
    assert last.json["usage"] == {"promptTokens": 42, "completionTokens": 3}
    assert sum(1 for e in events if "done" in e.json) == 1
    assert all(e.json["commandId"] == command_id for e in events)


def test_event_ids_name_the_stream_and_increase(server: Gunicorn, upstream: FakeUpstream) -> None:
    """Every event has an id '<streamId>-<n>' with n increasing, streamId = commandId."""
    key = unique_key("ids")
    upstream.add_scenario(key, Scenario(tokens=[f"t{i} " for i in range(20)]))
    events = SSEConnection(server.url, run_body(key)).read_all()
    command_id = events[0].json["commandId"]
    numbers = []
    for event in events:
        assert event.id is not None
        stream_id, _, n = event.id.rpartition("-")
        assert stream_id == str(command_id)
        numbers.append(int(n))
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


def test_each_event_is_id_data_blank_line(server: Gunicorn, upstream: FakeUpstream) -> None:
    """On the wire: optional retry/comment lines, then id, optional event, one data line, blank."""
    key = unique_key("wire")
    upstream.add_scenario(key, Scenario(tokens=["a\n\nb", "data: c"]))
    conn = SSEConnection(server.url, run_body(key))
    conn.read_all()
    blocks = [b for b in conn.raw.decode().split("\n\n") if b]
    assert blocks[0].startswith("retry: ") or blocks[0].startswith(":")
    for block in blocks[1:]:
        if block.startswith(":"):
            continue
        lines = block.split("\n")
        assert re.fullmatch(r"id: \d+-\d+", lines[0])
        assert lines[-1].startswith("data: {") and lines[-1].endswith("}")
        assert len(lines) in (2, 3)


def test_awkward_tokens_arrive_exactly(server: Gunicorn, upstream: FakeUpstream) -> None:
    """Unicode, emoji, CR/LF, blank lines and 'data:' inside tokens join to the exact output."""
    key = unique_key("awkward")
    upstream.add_scenario(key, Scenario(tokens=AWKWARD_TOKENS))
    events = SSEConnection(server.url, run_body(key)).read_all()
    assert content_of(events) == "".join(AWKWARD_TOKENS)
    assert events[-1].json["done"] is True


def test_many_fast_tokens_lose_nothing(server: Gunicorn, upstream: FakeUpstream) -> None:
    """2,000 tokens sent back to back join to exactly the model's output, in order."""
    key = unique_key("bulk")
    tokens = [f"<{i}>" for i in range(2000)]
    upstream.add_scenario(key, Scenario(tokens=tokens))
    events = SSEConnection(server.url, run_body(key)).read_all()
    assert content_of(events) == "".join(tokens)


def test_first_bytes_before_upstream_answers(server: Gunicorn, upstream: FakeUpstream) -> None:
    """Headers, the retry line and the title event arrive while the upstream is still silent."""
    key = unique_key("early")
    upstream.add_scenario(key, Scenario(tokens=["late"], header_delay=1.5))
    conn = SSEConnection(server.url, run_body(key, title="T"))
    assert conn.status == 200
    first = next(conn.events())
    assert first.json["title"] == "Summary of T"
    assert conn.parser.retry is not None
    record = upstream.wait_for_request(key)
    assert not record.completed.is_set(), "the title must not wait for the upstream"
    assert content_of(conn.read_all()) == "late"


def test_heartbeats_in_a_silent_gap(server: Gunicorn, upstream: FakeUpstream) -> None:
    """A ': ping' comment goes out every AXRISI_HEARTBEAT_SECONDS (0.4 s here) of silence."""
    key = unique_key("ping")
    upstream.add_scenario(key, Scenario(tokens=["a", "b"], first_token_delay=1.5))
    conn = SSEConnection(server.url, run_body(key))
    events = conn.read_all()
    first_content = next(e for e in events if "content" in e.json)
    assert first_content.comments.count("ping") >= 2
    assert content_of(events) == "ab"


def test_commands_catalog(server: Gunicorn) -> None:
    """GET /api/commands lists the five commands with labels."""
    import requests

    from .client import auth

    response = requests.get(server.url + "/api/commands", headers=auth(), timeout=5)
    assert response.status_code == 200
    names = [c["name"] for c in response.json()["commands"]]
    assert names == ["summarize", "explain", "translate", "rewrite", "custom"]
    assert all(c["label"] for c in response.json()["commands"])


def test_prompt_reaches_upstream(server: Gunicorn, upstream: FakeUpstream) -> None:
    """The upstream gets the model, stream=True, include_usage and the text in the messages."""
    key = unique_key("prompt")
    upstream.add_scenario(key, Scenario(tokens=["x"]))
    body = {"command": "translate", "language": "French", "text": f"Hello {key}"}
    SSEConnection(server.url, body).read_all()
    record = upstream.wait_for_request(key)
    sent = record.body
    assert sent["model"] == "test-model"
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert "French" in sent["messages"][0]["content"]
    assert f"Hello {key}" in sent["messages"][1]["content"]


def test_concurrent_streams_stay_separate(server: Gunicorn, upstream: FakeUpstream) -> None:
    """Twenty interleaved streams each get exactly their own tokens and distinct commandIds."""
    conns = []
    for i in range(20):
        key = unique_key(f"conc{i}")
        upstream.add_scenario(key, Scenario(tokens=[f"{i}:{j} " for j in range(10)],
                                            delay=0.01))
        conns.append((i, SSEConnection(server.url, run_body(key))))
    ids = set()
    for i, conn in conns:
        events = conn.read_all()
        assert content_of(events) == "".join(f"{i}:{j} " for j in range(10))
        ids.add(events[0].json["commandId"])
    assert len(ids) == 20


def test_upstream_connection_is_kept_alive_between_streams(server: Gunicorn,
                                                           upstream: FakeUpstream) -> None:
    """A stream read to its end hands its upstream connection to the next stream (one worker)."""
    records = []
    for n in range(3):
        key = unique_key(f"keepalive{n}")
        upstream.add_scenario(key, Scenario(tokens=["x"]))
        events = SSEConnection(server.url, run_body(key)).read_all()
        assert events[-1].event != "error" and content_of(events) == "x"
        records.append(upstream.wait_for_request(key))
    assert all(record.wait_completed() for record in records)
    assert len({record.connection_id for record in records}) == 1
