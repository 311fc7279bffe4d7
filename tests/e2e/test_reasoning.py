"""Reasoning models: the model's thinking relayed as ``reasoning`` events only on request,
never in the answer, counted in usage and the quota, with pings while the model thinks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, auth, content_of, make_token
from .servers import Gunicorn
from .test_stream import unique_key

THOUGHTS = ["The user", " wants", " a summary", "; the text", " is short."]
ANSWER = ["A", " short", " summary."]


def body(key: str, **extra: Any) -> dict[str, Any]:
    return {"command": "summarize", "text": f"Some page text {key}.", **extra}


def reasoning_of(events: list[Any]) -> str:
    return "".join(e.json["reasoning"] for e in events if e.json and "reasoning" in e.json)


@pytest.mark.parametrize("spelling", ["reasoning_content", "reasoning"])
def test_reasoning_is_relayed_on_request(server: Gunicorn, upstream: FakeUpstream,
                                         spelling: str) -> None:
    """Both spellings of the delta field: the thinking arrives as reasoning events, in order
    and before the answer; the content events are exactly the answer; usage says what the
    reasoning cost."""
    key = unique_key("think")
    upstream.add_scenario(key, Scenario(tokens=ANSWER, reasoning=THOUGHTS,
                                        reasoning_field=spelling, usage=(12, 8)))
    events = SSEConnection(server.url, body(key, reasoning=True)).read_all()
    assert reasoning_of(events) == "".join(THOUGHTS)
    assert content_of(events) == "".join(ANSWER)
    kinds = [next(iter(e.json)) for e in events if e.json]
    assert kinds.index("content") > max(i for i, k in enumerate(kinds) if k == "reasoning")
    done = events[-1].json
    assert done["done"] is True
    assert done["usage"] == {"promptTokens": 12, "completionTokens": 8,
                             "reasoningTokens": len(THOUGHTS)}
    stream_id = events[0].json["commandId"]
    assert all(e.json["commandId"] == stream_id for e in events)


def test_reasoning_is_not_sent_without_the_flag(server: Gunicorn,
                                                upstream: FakeUpstream) -> None:
    """Without ``"reasoning": true`` no reasoning event goes out (and none is kept for a
    resume); the answer and the usage are the same."""
    key = unique_key("quiet")
    upstream.add_scenario(key, Scenario(tokens=ANSWER, reasoning=THOUGHTS, usage=(12, 8)))
    conn = SSEConnection(server.url, body(key))
    events = conn.read_all()
    assert not any("reasoning" in e.json for e in events if e.json)
    assert "".join(THOUGHTS[2:4]).encode() not in conn.raw
    assert content_of(events) == "".join(ANSWER)
    assert events[-1].json["usage"]["reasoningTokens"] == len(THOUGHTS)
    stream_id = str(events[0].json["commandId"])
    replay = SSEConnection(server.url, None, method="GET", path=f"/api/streams/{stream_id}")
    assert [e.json for e in replay.read_all()] == [e.json for e in events]


def test_pings_while_the_model_thinks_in_silence(server: Gunicorn,
                                                 upstream: FakeUpstream) -> None:
    """A model that thinks for longer than the heartbeat, not relayed: the connection gets
    pings meanwhile, and the silence watch (2 s here) does not end the stream while the
    reasoning keeps coming."""
    key = unique_key("ponder")
    thoughts = ["hm"] * 6
    upstream.add_scenario(key, Scenario(tokens=ANSWER, reasoning=thoughts, reasoning_delay=0.5))
    conn = SSEConnection(server.url, body(key))
    events = conn.read_all()
    assert conn.raw.count(b": ping\n\n") >= 3  # 3 s of thinking, a heartbeat every 0.4 s
    assert content_of(events) == "".join(ANSWER)
    assert events[-1].json["done"] is True


@pytest.fixture(scope="module")
def quota_server(upstream: FakeUpstream) -> Iterator[Gunicorn]:
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k",
           "AXRISI_TOKEN_QUOTA": "1000/day", "AXRISI_RATE_LIMIT": "1000/minute"}
    with Gunicorn(env) as server:
        yield server


def test_reasoning_counts_in_usage_and_quota(quota_server: Gunicorn,
                                             upstream: FakeUpstream) -> None:
    """With no usage from the upstream the service counts the pieces itself: the same request
    with reasoning costs the quota more than without, by at most one token per reasoning
    delta (deltas that reach the service in one read count as one piece)."""
    def used_after(thoughts: list[str]) -> int:
        key = unique_key("count")
        upstream.add_scenario(key, Scenario(tokens=ANSWER, reasoning=thoughts, delay=0.05,
                                            reasoning_delay=0.05, include_usage_chunk=False))
        user = unique_key("thinker")
        events = SSEConnection(quota_server.url, {"command": "custom", "text": "x" * 400,
                                                  "instruction": key, "reasoning": True},
                               token=make_token(user)).read_all()
        assert reasoning_of(events) == "".join(thoughts)
        assert content_of(events) == "".join(ANSWER)
        usage = requests.get(quota_server.url + "/api/usage", headers=auth(make_token(user)),
                             timeout=5).json()
        return int(usage["tokens"]["used"])

    extra = used_after(THOUGHTS) - used_after([])
    assert 1 <= extra <= len(THOUGHTS)


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_the_flags_must_be_booleans(server: Gunicorn, value: Any) -> None:
    for name in ("reasoning", "background"):
        reply = requests.post(server.url + "/api/run", headers=auth(), timeout=5,
                              json={"command": "summarize", "text": "t", name: value})
        assert reply.status_code == 400
        assert reply.json() == {"code": "invalid_request",
                                "error": f"The field '{name}' must be true or false."}
