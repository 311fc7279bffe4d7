"""Background streams and the caller's list of streams, on one Redis and on a Redis Cluster.

A background stream goes on with nobody reading; ``GET /api/streams`` is how a new popup or a
second device finds it. Proved from outside: the fake upstream sees the answer written to its
end although the client left at once (and its connection closed when the stream is stopped or
runs out of time), and a reader on the other instance gets every event exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.fake_upstream import FakeUpstream, Scenario
from tests.sse_client import Event

from .client import SSEConnection, auth, content_of, make_token
from .faultproxy import FaultProxy
from .redis_cluster import SharedRedis
from .redis_server import RedisServer
from .servers import Gunicorn
from .test_resume import assert_exactly_once, resume
from .test_stream import unique_key

SETTINGS = {"AXRISI_MAX_STREAMS_PER_USER": "2", "AXRISI_RATE_LIMIT": "100000/minute",
            "AXRISI_HEARTBEAT_SECONDS": "0.5", "AXRISI_UPSTREAM_TIMEOUT_SECONDS": "30",
            "AXRISI_BACKGROUND_MAX_SECONDS": "4"}
TOKENS = [f"b{i} " for i in range(40)]


def env_for(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k", **SETTINGS, **extra}


@pytest.fixture(scope="module")
def pair(upstream: FakeUpstream, shared_redis: SharedRedis) -> Iterator[tuple[Gunicorn, Gunicorn]]:
    env = env_for(upstream, **shared_redis.env)
    with Gunicorn(env) as first, Gunicorn(env) as second:
        yield first, second


@pytest.fixture(scope="module")
def alone(upstream: FakeUpstream) -> Iterator[Gunicorn]:
    """One instance, no Redis: everything in the process."""
    with Gunicorn(env_for(upstream)) as server:
        yield server


def start(server: Gunicorn, upstream: FakeUpstream, user: str, scenario: Scenario,
          **fields: Any) -> tuple[str, Any]:
    """Start a stream as ``user``, read its first event, and close the connection once the
    upstream has the request (a stream whose client is gone before that may never reach it);
    returns its id and the upstream's record of the request."""
    key = unique_key("bg")
    upstream.add_scenario(key, scenario)
    conn = SSEConnection(server.url, {"command": "summarize", "text": f"Text {key}.", **fields},
                         token=make_token(user))
    assert conn.status == 200, conn.response.read()
    first = next(conn.events())
    record = upstream.wait_for_request(key)
    conn.drop()
    return str(first.json["commandId"]), record


def listed(server: Gunicorn, user: str) -> requests.Response:
    return requests.get(server.url + "/api/streams", headers=auth(make_token(user)), timeout=10)


def wait_for(probe: Callable[[], Any], what: str, seconds: float = 10.0) -> Any:
    """``probe()``'s first truthy answer, looked at every 50 ms (a deadline, not a timing
    claim: the list through Redis lags by design, up to the mirror's 0.2 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def entry_of(server: Gunicorn, user: str, stream_id: str) -> dict[str, Any] | None:
    reply = listed(server, user)
    assert reply.status_code == 200, reply.text
    return next((e for e in reply.json()["streams"] if e["streamId"] == stream_id), None)


def terminal(events: list[Event]) -> dict[str, Any]:
    return events[-1].json


def read_until_text(server: Gunicorn, user: str, stream_id: str, text: str) -> str:
    """Resume a running stream from its start until its content is ``text``, then leave;
    returns the id of the event that completed it (how the tokens were grouped into events
    depends on how they reached the service)."""
    conn = resume(server, stream_id, None, user)
    seen = conn.read_until(lambda _e: False, limit=1)
    while content_of(seen) != text:
        seen.append(next(conn.events()))
    conn.drop()
    assert seen[-1].id is not None
    return seen[-1].id


# Background streams ------------------------------------------------------------------------------


def test_a_background_stream_is_read_to_its_end_later_elsewhere(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    """The client closes after the first event; the model writes the whole answer (the
    upstream saw no hang-up); the other instance then replays it, exactly."""
    user = unique_key("owner")
    stream_id, record = start(pair[0], upstream, user, Scenario(tokens=TOKENS, delay=0.01),
                              background=True)
    assert record.wait_completed(10), "the answer was not generated to its end"
    assert not record.client_closed.is_set()
    wait_for(lambda: (entry_of(pair[1], user, stream_id) or {}).get("state") == "done",
             "the other instance lists the stream as done")
    assert_exactly_once(resume(pair[1], stream_id, None, user).read_all(), TOKENS)


def test_a_stream_not_in_the_background_is_cancelled_when_its_client_leaves(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    """The same request without the flag: the upstream sees its connection close, and the
    list says ``cancelled``."""
    user = unique_key("owner")
    stream_id, record = start(pair[0], upstream, user, Scenario(tokens=TOKENS, delay=0.05))
    assert record.wait_closed(5)
    entry = wait_for(lambda: (e := entry_of(pair[1], user, stream_id)) and
                     e["state"] != "running" and e, "ended")
    assert entry["state"] == "cancelled" and entry["background"] is False


def test_delete_stops_a_background_stream(pair: tuple[Gunicorn, Gunicorn],
                                          upstream: FakeUpstream) -> None:
    """A background stream whose model went silent: DELETE on the other instance closes the
    upstream connection, and every reader gets ``cancelled``."""
    user = unique_key("owner")
    stream_id, record = start(pair[0], upstream, user, Scenario(tokens=TOKENS, hang_after=3),
                              background=True)
    read_until_text(pair[0], user, stream_id, "".join(TOKENS[:3]))
    assert not record.client_closed.is_set()
    reply = requests.delete(f"{pair[1].url}/api/streams/{stream_id}",
                            headers=auth(make_token(user)), timeout=10)
    assert reply.status_code == 204
    assert record.wait_closed(5), "the upstream request was not closed"
    events = resume(pair[1], stream_id, None, user).read_all()
    assert terminal(events)["code"] == "cancelled"
    assert content_of(events) == "".join(TOKENS[:3])


def test_a_background_stream_counts_as_open_until_it_ends(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    """Two background streams with nobody reading hold the user's two places (the third
    request is refused, on either instance); once one is stopped, a new one is admitted."""
    user = unique_key("owner")
    ids = [start(server, upstream, user, Scenario(tokens=TOKENS, hang_after=1),
                 background=True)[0] for server in pair]
    for server in pair:
        refused = requests.post(server.url + "/api/run", headers=auth(make_token(user)),
                                json={"command": "summarize", "text": "more"}, timeout=10)
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_streams"
    usage = requests.get(pair[1].url + "/api/usage", headers=auth(make_token(user)),
                         timeout=10).json()
    assert usage["streams"]["open"] == 2
    for stream_id in ids:
        assert requests.delete(f"{pair[0].url}/api/streams/{stream_id}",
                               headers=auth(make_token(user)), timeout=10).status_code == 204
    wait_for(lambda: requests.get(pair[0].url + "/api/usage", headers=auth(make_token(user)),
                                  timeout=10).json()["streams"]["open"] == 0,
             "the places are given back")
    again, _record = start(pair[0], upstream, user, Scenario(tokens=["ok"]), background=True)
    assert again not in ids


def test_a_background_stream_past_its_maximum_ends_cancelled(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    """``AXRISI_BACKGROUND_MAX_SECONDS`` (4 s here, the upstream timeout 30 s): the silent
    model's request is closed and the stream ends ``cancelled``, for a reader elsewhere too."""
    user = unique_key("owner")
    started = time.monotonic()
    stream_id, record = start(pair[0], upstream, user, Scenario(tokens=TOKENS, hang_after=2),
                              background=True)
    events = resume(pair[1], stream_id, None, user).read_all()
    assert terminal(events)["code"] == "cancelled"
    assert record.wait_closed(5)
    assert record.closed_at is not None and record.closed_at - started >= 4.0
    assert content_of(events) == "".join(TOKENS[:2])


# The list ---------------------------------------------------------------------------------------


def test_the_list_spans_both_instances_and_never_another_users(
        pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream) -> None:
    """A user's finished stream on one instance and running one on the other are listed on
    both, newest first, with their state and newest event; another user sees neither."""
    user, other = unique_key("lister"), unique_key("stranger")
    done_id, done_record = start(pair[0], upstream, user, Scenario(tokens=["x", "y"]),
                                 background=True)
    assert done_record.wait_completed(5)
    done_last = resume(pair[1], done_id, None, user).read_all()[-1].id
    running_id, _ = start(pair[1], upstream, user, Scenario(tokens=TOKENS, hang_after=2),
                          background=True)
    running_last = read_until_text(pair[1], user, running_id, "".join(TOKENS[:2]))
    theirs, _ = start(pair[0], upstream, other, Scenario(tokens=["z"]), background=True)
    for server in pair:
        streams = wait_for(lambda s=server: (r := listed(s, user).json()["streams"]) and
                           len(r) == 2 and r[1]["state"] == "done" and
                           r[0]["lastEventId"] == running_last and r,
                           "both streams listed, as they are")
        assert [s["streamId"] for s in streams] == [running_id, done_id]
        running, finished = streams
        assert running["state"] == "running" and running["background"] is True
        assert finished["lastEventId"] == done_last
        assert finished["command"] == "summarize" and finished["title"]
        assert running["startedAt"] >= finished["startedAt"]
        assert wait_for(lambda s=server: [e["streamId"] for e in
                                          listed(s, other).json()["streams"]],
                        "the other user's stream listed") == [theirs]
    requests.delete(f"{pair[0].url}/api/streams/{running_id}",
                    headers=auth(make_token(user)), timeout=10)


def test_the_list_without_redis(alone: Gunicorn, upstream: FakeUpstream) -> None:
    """One process: the list is its own streams, exact at once."""
    user = unique_key("solo")
    stream_id, record = start(alone, upstream, user, Scenario(tokens=TOKENS, hang_after=1),
                              background=True)
    assert record.wait_tokens(1)
    entry = entry_of(alone, user, stream_id)
    assert entry is not None and entry["state"] == "running"
    assert entry["lastEventId"] == f"{stream_id}-1"
    assert listed(alone, unique_key("nobody")).json() == {"streams": []}
    requests.delete(f"{alone.url}/api/streams/{stream_id}", headers=auth(make_token(user)),
                    timeout=10)
    entry = wait_for(lambda: (e := entry_of(alone, user, stream_id)) and
                     e["state"] != "running" and e, "ended")
    assert entry["state"] == "cancelled"


def test_the_list_needs_a_token(alone: Gunicorn) -> None:
    reply = requests.get(alone.url + "/api/streams", timeout=10)
    assert reply.status_code == 401 and reply.json()["code"] == "unauthorized"


@pytest.fixture(scope="module")
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture(scope="module")
def behind_proxy(upstream: FakeUpstream, proxy: FaultProxy) -> Iterator[Gunicorn]:
    with Gunicorn(env_for(upstream, REDIS_URL=proxy.url)) as server:
        yield server


def test_the_list_is_503_while_redis_stalls(behind_proxy: Gunicorn, upstream: FakeUpstream,
                                            proxy: FaultProxy) -> None:
    """While Redis does not answer the list cannot be known: 503 with Retry-After, never a
    partial list; once Redis answers again, the stream is listed."""
    user = unique_key("stalled")
    stream_id, record = start(behind_proxy, upstream, user, Scenario(tokens=["a", "b"]),
                              background=True)
    assert record.wait_completed(5)
    wait_for(lambda: entry_of(behind_proxy, user, stream_id), "listed")
    proxy.stall(3.0)
    try:
        reply = listed(behind_proxy, user)
        assert reply.status_code == 503, reply.text
        assert reply.json()["code"] == "unavailable" and reply.headers["Retry-After"]
    finally:
        proxy.heal()
    entry = wait_for(lambda: listed(behind_proxy, user).status_code == 200 and
                     entry_of(behind_proxy, user, stream_id), "listed again")
    assert entry["state"] == "done"
