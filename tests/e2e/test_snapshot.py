"""``?catchup=snapshot``: a resume's kept events folded into one event, on the generating
instance and through Redis (one Redis, a Redis Cluster), from every position of a stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fake_upstream import FakeUpstream, Scenario
from tests.sse_client import Event

from .client import SSEConnection, auth, content_of, make_token
from .redis_cluster import SharedRedis
from .servers import Gunicorn
from .test_stream import unique_key

SETTINGS = {"AXRISI_MAX_STREAMS_PER_USER": "0", "AXRISI_RATE_LIMIT": "100000/minute",
            "AXRISI_HEARTBEAT_SECONDS": "0.5", "AXRISI_UPSTREAM_TIMEOUT_SECONDS": "10"}
TOKENS = [f"s{i} " for i in range(12)]
USER = "snapper"


@pytest.fixture(scope="module")
def pair(upstream: FakeUpstream, shared_redis: SharedRedis) -> Iterator[tuple[Gunicorn, Gunicorn]]:
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k", **SETTINGS,
           **shared_redis.env}
    with Gunicorn(env) as first, Gunicorn(env) as second:
        yield first, second


def snapshot_resume(server: Gunicorn, stream_id: str, last_id: str | None) -> SSEConnection:
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    return SSEConnection(server.url, None, token=make_token(USER), method="GET",
                         path=f"/api/streams/{stream_id}?catchup=snapshot", headers=headers)


def text_of(events: list[Event]) -> str:
    """The answer's text as a snapshot reader sees it: the snapshot's content, then content."""
    folded = "".join(e.json["snapshot"]["content"] for e in events
                     if e.json and "snapshot" in e.json)
    return folded + content_of(events)


def run(server: Gunicorn, upstream: FakeUpstream, scenario: Scenario,
        **fields: Any) -> SSEConnection:
    key = unique_key("snap")
    upstream.add_scenario(key, scenario)
    return SSEConnection(server.url, {"command": "summarize", "text": f"Text {key}.", **fields},
                         token=make_token(USER))


def test_a_snapshot_from_every_position_of_a_finished_stream(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    """Before the title, after it, mid-answer, at the last content event, at the end: on both
    instances the snapshot (when there is one) and what follows hold exactly the rest of the
    text, once, and end with the same terminal event."""
    events = run(pair[0], upstream, Scenario(tokens=TOKENS, delay=0.01)).read_all()
    stream_id = str(events[0].json["commandId"])
    assert content_of(events) == "".join(TOKENS)
    positions: list[str | None] = [None, *(e.id for e in events)]
    for server in pair:
        for index, last_id in enumerate(positions):
            after = events[index:]  # the events after last_id
            reply = snapshot_resume(server, stream_id, last_id)
            if not after:
                assert reply.status == 204
                continue
            got = reply.read_all()
            assert got[-1].json == events[-1].json and got[-1].id == events[-1].id
            assert text_of(got) == content_of(after), (server.url, last_id)
            if len(after) == 1:  # at the last content event: nothing to fold
                assert [(e.id, e.json) for e in got] == [(e.id, e.json) for e in after]
                continue
            snapshot = got[0]
            assert snapshot.id == events[-2].id  # it covers everything kept but the end
            assert ("title" in snapshot.json["snapshot"]) == (last_id is None)
            assert snapshot.json["commandId"] == int(stream_id)
            assert len(got) == 2  # the snapshot, then the terminal event


def test_a_snapshot_then_live_events_of_a_running_stream(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    """A background stream read halfway and left; a snapshot resume on the other instance gets
    the text so far in one event, then the rest live: exactly the answer, once. A second
    reader from the snapshot's own id gets only what came after it."""
    tokens = [f"r{i} " for i in range(40)]
    conn = run(pair[0], upstream, Scenario(tokens=tokens, delay=0.05), background=True)
    seen = [next(conn.events())]
    while len(content_of(seen)) < len("".join(tokens[:10])):
        seen.append(next(conn.events()))
    conn.drop()
    stream_id = str(seen[0].json["commandId"])
    whole = snapshot_resume(pair[1], stream_id, None)
    first = next(whole.events())
    assert "snapshot" in first.json and first.json["snapshot"]["title"] == seen[0].json["title"]
    rest = [first, *whole.events()]
    assert text_of(rest) == "".join(tokens)
    assert rest[-1].json["done"] is True
    ids = [e.id for e in rest]
    assert len(ids) == len(set(ids))
    later = snapshot_resume(pair[0], stream_id, first.id).read_all()
    assert text_of(later) == content_of(rest[1:])


def test_a_snapshot_folds_reasoning_apart(pair: tuple[Gunicorn, Gunicorn],
                                          upstream: FakeUpstream) -> None:
    thoughts, answer = ["think", "ing"], ["the", " answer"]
    events = run(pair[0], upstream, Scenario(tokens=answer, reasoning=thoughts),
                 reasoning=True).read_all()
    stream_id = str(events[0].json["commandId"])
    for server in pair:
        got = snapshot_resume(server, stream_id, None).read_all()
        assert got[0].json["snapshot"]["reasoning"] == "thinking"
        assert got[0].json["snapshot"]["content"] == "the answer"
        assert [e.json for e in got[1:]] == [events[-1].json]


@pytest.mark.parametrize("query", ["catchup=all", "catchup=snapshot&catchup=snapshot",
                                   "catchup="])
def test_other_catchup_values_are_refused(pair: tuple[Gunicorn, Gunicorn],
                                          upstream: FakeUpstream, query: str) -> None:
    events = run(pair[0], upstream, Scenario(tokens=["a"])).read_all()
    reply = requests.get(f"{pair[0].url}/api/streams/{events[0].json['commandId']}?{query}",
                         headers=auth(make_token(USER)), timeout=10)
    assert reply.status_code == 400 and reply.json()["code"] == "invalid_request"
