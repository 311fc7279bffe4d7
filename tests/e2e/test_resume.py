"""Resumable streams: a client that reconnects with Last-Event-ID gets every token once."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.fake_upstream import FakeUpstream, Scenario
from tests.sse_client import Event

from .client import SSEConnection, auth, content_of, make_token
from .redis_cluster import SharedRedis
from .redis_server import RedisServer
from .servers import Gunicorn
from .test_stream import run_body, unique_key

GRACE = {"AXRISI_RESUME_GRACE_SECONDS": "5", "AXRISI_MAX_STREAMS_PER_USER": "0",
         "AXRISI_RATE_LIMIT": "100000/minute", "AXRISI_HEARTBEAT_SECONDS": "0.5",
         "AXRISI_UPSTREAM_TIMEOUT_SECONDS": "5"}


def env_for(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k", **GRACE, **extra}


@pytest.fixture(scope="module")
def local_grace(upstream: FakeUpstream) -> Iterator[Gunicorn]:
    """One worker, no Redis, a 5 s grace before a stream without client is cancelled."""
    with Gunicorn(env_for(upstream)) as server:
        yield server


@pytest.fixture(scope="module")
def pair(upstream: FakeUpstream, shared_redis: SharedRedis) -> Iterator[tuple[Gunicorn, Gunicorn]]:
    """Two instances sharing one Redis, with the same grace."""
    env = env_for(upstream, **shared_redis.env)
    with Gunicorn(env) as first, Gunicorn(env) as second:
        yield first, second


def resume(server: Gunicorn, stream_id: str, last_id: str | None, user: str = "alice",
           via_query: bool = False) -> SSEConnection:
    headers = {}
    path = f"/api/streams/{stream_id}"
    if last_id is not None:
        if via_query:
            path += f"?lastEventId={last_id}"
        else:
            headers["Last-Event-ID"] = last_id
    return SSEConnection(server.url, None, token=make_token(user), method="GET", path=path,
                         headers=headers)


def drop_and_resume(first: Gunicorn, second: Gunicorn, upstream: FakeUpstream,
                    tokens: list[str], drop_after: int, user: str = "alice") -> list[Event]:
    """Stream on ``first``, drop once ``drop_after`` tokens arrived, resume on ``second``.

    Counted in text, not in events: tokens that reach the service in one network read travel in
    one event (under load, often), so 28 tokens may be fewer than 28 events.
    """
    key = unique_key("resume")
    upstream.add_scenario(key, Scenario(tokens=tokens, delay=0.01))
    conn = SSEConnection(first.url, run_body(key), token=make_token(user))
    seen: list[Event] = [next(conn.events())]
    wanted = len("".join(tokens[:drop_after]))
    while len(content_of(seen)) < wanted:
        seen.append(next(conn.events()))
    conn.drop()
    last_id = seen[-1].id
    assert last_id is not None
    stream_id = last_id.rpartition("-")[0]
    again = resume(second, stream_id, last_id, user)
    assert again.status == 200
    assert again.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    return seen + again.read_all()


def assert_exactly_once(events: list[Event], tokens: list[str]) -> None:
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "an event arrived twice"
    numbers = [int(i.rpartition("-")[2]) for i in ids if i]
    assert numbers == list(range(len(numbers))), "an event is missing or out of order"
    assert content_of(events) == "".join(tokens)
    assert events[-1].json.get("done") is True


def test_drop_and_resume_without_redis(local_grace: Gunicorn, upstream: FakeUpstream) -> None:
    """Drop at a random token and resume on the same worker: the text arrives exactly once."""
    tokens = [f"t{i} " for i in range(60)]
    events = drop_and_resume(local_grace, local_grace, upstream, tokens, random.randint(1, 50))
    assert_exactly_once(events, tokens)


def test_drop_and_resume_on_another_instance(pair: tuple[Gunicorn, Gunicorn],
                                             upstream: FakeUpstream) -> None:
    """Drop on one instance, resume on the other through Redis: exactly once, to the end."""
    tokens = [f"w{i} " for i in range(60)]
    events = drop_and_resume(pair[0], pair[1], upstream, tokens, random.randint(1, 50))
    assert_exactly_once(events, tokens)


def test_resume_after_the_stream_finished(pair: tuple[Gunicorn, Gunicorn],
                                          upstream: FakeUpstream) -> None:
    """A finished stream replays from any id (here or elsewhere) and with no id from the start."""
    key = unique_key("finished")
    tokens = ["a", "b", "c", "d"]
    upstream.add_scenario(key, Scenario(tokens=tokens, delay=0.02))
    events = SSEConnection(pair[0].url, run_body(key)).read_all()
    assert len(events) == 6  # title, four tokens, done
    stream_id = events[0].id.rpartition("-")[0]
    for server in pair:
        # After the terminal event's id there is nothing more: 204, so EventSource stops.
        after_end = resume(server, stream_id, events[-1].id)
        assert after_end.status == 204 and after_end.read_all() == []
        whole = resume(server, stream_id, None).read_all()
        assert [e.id for e in whole] == [e.id for e in events]
        tail = resume(server, stream_id, events[2].id).read_all()
        assert [e.id for e in tail] == [e.id for e in events[3:]]
        by_query = resume(server, stream_id, events[2].id, via_query=True).read_all()
        assert [e.id for e in by_query] == [e.id for e in events[3:]]


def test_resume_errors(pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    """Another user's stream, an unknown one: 404; an id of another stream: 400."""
    key = unique_key("errors")
    upstream.add_scenario(key, Scenario(tokens=["x"]))
    events = SSEConnection(pair[0].url, run_body(key), token=make_token("alice")).read_all()
    stream_id = events[0].id.rpartition("-")[0]
    for server in pair:
        other = requests.get(f"{server.url}/api/streams/{stream_id}", timeout=5,
                             headers={"Authorization": f"Bearer {make_token('mallory')}"})
        assert other.status_code == 404 and other.json()["code"] == "not_found"
        unknown = requests.get(f"{server.url}/api/streams/1234567890123", headers=auth(),
                               timeout=5)
        assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
        garbage = requests.get(f"{server.url}/api/streams/abc", headers=auth(), timeout=5)
        assert garbage.status_code == 404
        wrong = requests.get(f"{server.url}/api/streams/{stream_id}", timeout=5,
                             headers={**auth(), "Last-Event-ID": "999-1"})
        assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_request"
        no_auth = requests.get(f"{server.url}/api/streams/{stream_id}", timeout=5)
        assert no_auth.status_code == 401
    for server in pair:  # past the end of a finished stream, here and through Redis
        past_end = requests.get(f"{server.url}/api/streams/{stream_id}", timeout=5,
                                headers={**auth(), "Last-Event-ID": f"{stream_id}-99"})
        assert past_end.status_code == 400
        # str.isdigit() accepts superscripts that int() refuses: that was a 500.
        for odd in ("1\u00b9", "\u00b2", "\u00b3"):
            superscript = requests.get(f"{server.url}/api/streams/{stream_id}", timeout=5,
                                       headers={**auth(), "Last-Event-ID": f"{stream_id}-{odd}"})
            assert superscript.status_code == 400, odd


def test_an_id_past_the_end_of_a_running_stream_is_400_everywhere(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    """A running stream, resumed with an id it has not reached: 400 on its own instance and
    through Redis (which waits until the generating worker has written all it had, then judges:
    it used to send pings for ever)."""
    key = unique_key("past-end")
    upstream.add_scenario(key, Scenario(tokens=["p "] * 200, delay=0.05))
    conn = SSEConnection(pair[0].url, run_body(key))
    seen = conn.read_until(lambda e: "content" in e.json)
    stream_id = seen[0].id.rpartition("-")[0]
    try:
        for server in pair:
            started = time.monotonic()
            past_end = requests.get(f"{server.url}/api/streams/{stream_id}", timeout=10,
                                    headers={**auth(), "Last-Event-ID": f"{stream_id}-5000"})
            assert past_end.status_code == 400, server
            assert past_end.json()["code"] == "invalid_request"
            assert time.monotonic() - started < 5
    finally:
        conn.drop()


def test_grace_expiry_cancels_the_upstream(upstream: FakeUpstream) -> None:
    """Nobody back within the grace: the upstream is closed, and a resume ends 'cancelled'."""
    key = unique_key("grace")
    upstream.add_scenario(key, Scenario(tokens=["x "] * 1000, delay=0.05))
    with Gunicorn(env_for(upstream, AXRISI_RESUME_GRACE_SECONDS="1")) as server:
        conn = SSEConnection(server.url, run_body(key))
        seen = conn.read_until(lambda e: "content" in e.json)
        record = upstream.wait_for_request(key)
        dropped_at = conn.drop()
        time.sleep(0.5)
        assert not record.client_closed.is_set(), "cancelled before the grace was over"
        assert record.wait_closed(3)
        assert record.closed_at is not None and 0.9 < record.closed_at - dropped_at < 2.0
        tail = resume(server, seen[0].id.rpartition("-")[0], seen[-1].id).read_all()
    assert tail[-1].event == "error" and tail[-1].json["code"] == "cancelled"


def test_default_cancels_at_once_and_resume_says_cancelled(server: Gunicorn,
                                                           upstream: FakeUpstream) -> None:
    """With no grace (the default), a drop cancels at once; a resume then ends 'cancelled'."""
    key = unique_key("nograce")
    upstream.add_scenario(key, Scenario(tokens=["y "] * 1000, delay=0.05))
    conn = SSEConnection(server.url, run_body(key))
    seen = conn.read_until(lambda e: "content" in e.json)
    conn.drop()
    assert upstream.wait_for_request(key).wait_closed(2)
    tail = resume(server, seen[0].id.rpartition("-")[0], seen[-1].id).read_all()
    assert tail[-1].event == "error" and tail[-1].json["code"] == "cancelled"
    assert content_of(tail).strip("y ") == ""


def test_memory_cap_honoured(upstream: FakeUpstream, redis_server: RedisServer) -> None:
    """With at most 20 events kept per stream, an old id answers 404 and a recent one resumes."""
    key = unique_key("cap")
    tokens = [f"c{i} " for i in range(100)]
    # Paced, so that tokens make separate events (one network read can carry several).
    upstream.add_scenario(key, Scenario(tokens=tokens, delay=0.004))
    for redis_url in (None, redis_server.url):
        extra = {"AXRISI_RESUME_MAX_EVENTS": "20"}
        if redis_url:
            extra["REDIS_URL"] = redis_url
        with Gunicorn(env_for(upstream, **extra)) as server:
            events = SSEConnection(server.url, run_body(key)).read_all()
            assert content_of(events) == "".join(tokens)
            assert len(events) > 30
            stream_id = events[0].id.rpartition("-")[0]
            old = requests.get(f"{server.url}/api/streams/{stream_id}", timeout=5,
                               headers={**auth(), "Last-Event-ID": events[1].id})
            assert old.status_code == 404 and old.json()["code"] == "not_found"
            recent = resume(server, stream_id, events[-5].id).read_all()
            assert [e.id for e in recent] == [e.id for e in events[-4:]]


def test_a_hundred_drops_resumed_on_the_other_instance(pair: tuple[Gunicorn, Gunicorn],
                                                       upstream: FakeUpstream) -> None:
    """100 streams dropped at random points, each resumed on the other instance: all exact."""
    failures: list[str] = []
    rng = random.Random(7)
    plans = [(i, rng.randint(1, 28)) for i in range(100)]

    def worker(chunk: list[tuple[int, int]]) -> None:
        for i, drop_after in chunk:
            tokens = [f"{i}.{j}{'🙂' if j % 7 == 0 else ''} " for j in range(30)]
            first, second = (pair if i % 2 == 0 else pair[::-1])
            user = f"user-{uuid.uuid4().hex[:8]}"
            try:
                events = drop_and_resume(first, second, upstream, tokens, drop_after, user)
                assert_exactly_once(events, tokens)
            except (AssertionError, StopIteration, OSError) as error:
                failures.append(f"stream {i}: {error!r}")

    threads = [threading.Thread(target=worker, args=(plans[k::10],)) for k in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:5]
