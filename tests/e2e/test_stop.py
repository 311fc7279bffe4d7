"""DELETE /api/streams/<id>: a Stop that stops, with resume grace on, here or on another instance.

Proved from the upstream's side: the fake upstream sees its connection close within a second of
the DELETE, and every reader's stream ends with ``cancelled``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, auth, content_of, make_token
from .redis_cluster import SharedRedis
from .servers import Gunicorn
from .test_resume import env_for, resume
from .test_stream import run_body, unique_key


@pytest.fixture(scope="module")
def pair(upstream: FakeUpstream, shared_redis: SharedRedis) -> Iterator[tuple[Gunicorn, Gunicorn]]:
    """Two instances sharing Redis, 5 s of resume grace: closing a connection stops nothing."""
    env = env_for(upstream, **shared_redis.env)
    with Gunicorn(env) as first, Gunicorn(env) as second:
        yield first, second


def delete(server: Gunicorn, stream_id: str, user: str = "alice") -> requests.Response:
    return requests.delete(f"{server.url}/api/streams/{stream_id}", timeout=5,
                           headers={"Authorization": f"Bearer {make_token(user)}"})


def start_long_stream(server: Gunicorn, upstream: FakeUpstream) -> tuple[SSEConnection, str, str]:
    key = unique_key("stop")
    upstream.add_scenario(key, Scenario(tokens=["s "] * 2000, delay=0.02))
    conn = SSEConnection(server.url, run_body(key))
    seen = conn.read_until(lambda e: "content" in e.json)
    return conn, seen[0].id.rpartition("-")[0], key


@pytest.mark.parametrize("where", ["same instance", "other instance"])
def test_delete_closes_the_upstream_within_a_second_and_readers_get_cancelled(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream, where: str) -> None:
    conn, stream_id, key = start_long_stream(pair[0], upstream)
    record = upstream.wait_for_request(key)
    target = pair[0] if where == "same instance" else pair[1]
    asked = time.monotonic()
    answer = delete(target, stream_id)
    assert answer.status_code == 204, answer.text
    assert record.wait_closed(2), "the upstream request was not closed"
    assert record.closed_at is not None and record.closed_at - asked < 1.0
    rest = conn.read_all()  # the live reader's stream ends, with cancelled
    assert rest and rest[-1].event == "error" and rest[-1].json["code"] == "cancelled"
    for server in pair:  # and so does every later resume, here or elsewhere
        replay = resume(server, stream_id, None).read_all()
        assert replay[-1].event == "error" and replay[-1].json["code"] == "cancelled"


def test_delete_of_a_finished_stream_is_204_and_keeps_its_end(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    key = unique_key("stop-done")
    upstream.add_scenario(key, Scenario(tokens=["a", "b"]))
    events = SSEConnection(pair[0].url, run_body(key)).read_all()
    stream_id = events[0].id.rpartition("-")[0]
    for server in pair:
        assert delete(server, stream_id).status_code == 204
        replay = resume(server, stream_id, None).read_all()
        assert replay[-1].json.get("done") is True and content_of(replay) == "ab"


def test_delete_refuses_strangers_and_unknown_streams(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    conn, stream_id, key = start_long_stream(pair[0], upstream)
    record = upstream.wait_for_request(key)
    try:
        for server in pair:
            other = delete(server, stream_id, user="mallory")
            assert other.status_code == 404 and other.json()["code"] == "not_found"
            assert delete(server, "1234567890123").status_code == 404
            assert delete(server, "abc").status_code == 404
            unauthenticated = requests.delete(f"{server.url}/api/streams/{stream_id}",
                                              timeout=5)
            assert unauthenticated.status_code == 401
        assert not record.client_closed.is_set(), "a refused DELETE stopped the stream"
    finally:
        assert delete(pair[0], stream_id).status_code == 204
        conn.drop()


def test_delete_without_redis(upstream: FakeUpstream) -> None:
    """One worker, no Redis, grace on: the DELETE stops it all the same."""
    with Gunicorn(env_for(upstream)) as server:
        conn, stream_id, key = start_long_stream(server, upstream)
        record = upstream.wait_for_request(key)
        conn.drop()  # with grace on, the model goes on
        time.sleep(0.3)
        assert not record.client_closed.is_set()
        assert delete(server, stream_id).status_code == 204
        assert record.wait_closed(1.5)
        unknown = requests.delete(f"{server.url}/api/streams/1234567890123", headers=auth(),
                                  timeout=5)
        assert unknown.status_code == 404
