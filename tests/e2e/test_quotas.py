"""Per-user quotas that hold across workers and instances, against a real redis-server."""

from __future__ import annotations

import math
import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from axrisi.shared import keys
from axrisi.users import user_key
from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, content_of, make_token, post_run
from .procnet import children, worker_holding
from .redis_cluster import SharedRedis
from .redis_server import RedisServer
from .servers import Gunicorn
from .test_stream import run_body, unique_key


def quota_env(upstream: FakeUpstream, redis_url: str | None = None, **extra: str) -> dict:
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k",
           "AXRISI_HEARTBEAT_SECONDS": "0.5", "AXRISI_UPSTREAM_TIMEOUT_SECONDS": "2",
           "AXRISI_SEND_TIMEOUT_SECONDS": "2", "AXRISI_STREAM_LEASE_SECONDS": "2",
           "AXRISI_RATE_LIMIT": "1000/minute", **extra}
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


class Attempt:
    """One POST /api/run on a fresh connection, kept open so its worker can be identified."""

    def __init__(self, server: Gunicorn, user: str, key: str) -> None:
        self.conn = SSEConnection(server.url, run_body(key), token=make_token(user))
        self.status = self.conn.status
        assert self.conn.conn.sock is not None
        client_port = self.conn.conn.sock.getsockname()[1]
        assert server.proc is not None
        self.worker = worker_holding(server.proc.pid, server.port, client_port)
        if self.status != 200:
            self.body = self.conn.response.read()


def test_rate_limit_is_one_total_across_two_workers(upstream: FakeUpstream,
                                                    shared_redis: SharedRedis) -> None:
    """5/minute with WEB_CONCURRENCY=2 and Redis: 5 allowed in all, whichever worker serves."""
    key = unique_key("rate2w")
    upstream.add_scenario(key, Scenario(tokens=["x"] * 100, delay=0.05))
    env = quota_env(upstream, **shared_redis.env, AXRISI_RATE_LIMIT="5/minute",
                    AXRISI_MAX_STREAMS_PER_USER="0")
    user = new_user()
    with Gunicorn(env, workers=2) as server:
        assert server.proc is not None
        attempts: list[Attempt] = []
        while len(attempts) < 40:
            attempts.append(Attempt(server, user, key))
            per_worker = {a.worker for a in attempts}
            if len(attempts) >= 10 and len(per_worker) == 2:
                break
        workers = {a.worker for a in attempts}
        assert len(workers) == 2 and None not in workers, "requests must land on both workers"
        allowed = [a for a in attempts if a.status == 200]
        limited = [a for a in attempts if a.status == 429]
        assert len(allowed) == 5
        assert len(limited) == len(attempts) - 5
        for attempt in limited:
            assert attempt.conn.headers["Content-Type"] == "application/json"
            assert int(attempt.conn.headers["Retry-After"]) >= 1
            assert b'"code":"rate_limited"' in attempt.body
        for attempt in attempts:
            attempt.conn.drop()


def test_rate_limit_is_one_total_across_two_instances(upstream: FakeUpstream,
                                                      shared_redis: SharedRedis) -> None:
    """Two separate gunicorn instances sharing Redis allow 5/minute for one user, not 10."""
    key = unique_key("rate2i")
    upstream.add_scenario(key, Scenario(tokens=["ok"]))
    env = quota_env(upstream, **shared_redis.env, AXRISI_RATE_LIMIT="5/minute")
    user = new_user()
    with Gunicorn(env) as first, Gunicorn(env) as second:
        statuses = []
        for i in range(12):
            server = (first, second)[i % 2]
            response = requests.post(server.url + "/api/run", json=run_body(key), timeout=10,
                                     headers={"Authorization": f"Bearer {make_token(user)}"})
            statuses.append(response.status_code)
    assert statuses.count(200) == 5 and statuses.count(429) == 7


def test_failed_auth_counts_against_no_quota(upstream: FakeUpstream) -> None:
    """Requests with bad tokens do not spend the user's rate limit."""
    key = unique_key("auth-rate")
    upstream.add_scenario(key, Scenario(tokens=["ok"]))
    env = quota_env(upstream, AXRISI_RATE_LIMIT="3/minute")
    user = new_user()
    with Gunicorn(env) as server:
        for _ in range(5):
            bad = requests.post(server.url + "/api/run", json=run_body(key), timeout=5,
                                headers={"Authorization": "Bearer nope"})
            assert bad.status_code == 401
        good = [requests.post(server.url + "/api/run", json=run_body(key), timeout=5,
                              headers={"Authorization": f"Bearer {make_token(user)}"}).status_code
                for _ in range(4)]
    assert good == [200, 200, 200, 429]


def test_rate_limit_is_per_user(upstream: FakeUpstream) -> None:
    """One user's spent rate limit does not touch another user's."""
    key = unique_key("rate-user")
    upstream.add_scenario(key, Scenario(tokens=["ok"]))
    with Gunicorn(quota_env(upstream, AXRISI_RATE_LIMIT="2/minute")) as server:
        def post(user: str) -> int:
            return requests.post(server.url + "/api/run", json=run_body(key), timeout=5,
                                 headers={"Authorization": f"Bearer {make_token(user)}"}
                                 ).status_code
        alice, bob = new_user(), new_user()
        assert [post(alice), post(alice), post(alice)] == [200, 200, 429]
        assert [post(bob), post(bob)] == [200, 200]


@pytest.fixture(scope="module")
def one_slot_server(upstream: FakeUpstream, shared_redis: SharedRedis) -> Iterator[Gunicorn]:
    """Two workers sharing Redis, one open stream per user."""
    env = quota_env(upstream, **shared_redis.env, AXRISI_MAX_STREAMS_PER_USER="1")
    with Gunicorn(env, workers=2) as server:
        yield server


def open_when_admitted(server: Gunicorn, user: str, key: str, within: float,
                       pause: float) -> SSEConnection:
    """Open a stream, retrying refusals for ``within`` seconds: a slot is given back just after
    its stream ends (asynchronously), while a leaked slot never is. Returns the last attempt."""
    deadline = time.monotonic() + within
    while True:
        conn = SSEConnection(server.url, run_body(key), token=make_token(user))
        if conn.status == 200 or time.monotonic() > deadline:
            return conn
        conn.response.read()
        conn.drop()
        time.sleep(pause)


def assert_slot_free(server: Gunicorn, upstream: FakeUpstream, user: str,
                     within: float = 3.0) -> None:
    """A new stream for the user is admitted and completes (so the slot was given back)."""
    key = unique_key("slot-check")
    upstream.add_scenario(key, Scenario(tokens=["free"]))
    conn = open_when_admitted(server, user, key, within, pause=0.05)
    assert conn.status == 200, "the open-stream slot was not given back"
    assert content_of(conn.read_all()) == "free"


def records_of(shared_redis: SharedRedis, user: str) -> int:
    """How many stream records (ids claimed in Redis) belong to ``user``, on every master."""
    client = shared_redis.client()
    owner = user_key(user)
    found = [client.get(key) for key in client.scan_iter(match="axrisi:{*}:record", count=1000)]
    return sum(1 for value in found if value is not None and value.split()[0] == owner.encode())


def open_second(server: Gunicorn, user: str) -> tuple[int, bytes]:
    conn = SSEConnection(server.url, run_body("second"), token=make_token(user))
    body = conn.response.read() if conn.status != 200 else b""
    conn.drop()
    return conn.status, body


@pytest.mark.parametrize("way_out", ["done", "upstream_error", "client_gone_before_first_token",
                                     "client_gone_mid_stream", "upstream_timeout",
                                     "send_timeout"])
def test_stream_slot_given_back_on_every_way_out(one_slot_server: Gunicorn,
                                                 upstream: FakeUpstream, way_out: str) -> None:
    """With one slot per user: a second stream is refused while one runs, admitted after."""
    user = new_user()
    key = unique_key(f"slot-{way_out}")
    scenario = {
        "done": Scenario(tokens=["a", "b"], first_token_delay=0.5),
        "upstream_error": Scenario(status=500, header_delay=0.5),
        "client_gone_before_first_token": Scenario(tokens=["x"], hang_after=0),
        "client_gone_mid_stream": Scenario(tokens=["x"] * 1000, delay=0.05),
        "upstream_timeout": Scenario(tokens=["x", "y"], hang_after=1),
        "send_timeout": Scenario(tokens=["y" * 16_000] * 20_000, delay=0.002),
    }[way_out]
    upstream.add_scenario(key, scenario)
    conn = SSEConnection(one_slot_server.url, run_body(key), token=make_token(user))
    assert conn.status == 200
    status, body = open_second(one_slot_server, user)
    assert status == 429 and b'"code":"too_many_streams"' in body
    if way_out in ("done", "upstream_error", "upstream_timeout"):
        conn.read_all()
    elif way_out == "send_timeout":
        upstream.wait_for_request(key).wait_closed(30)
    else:
        if way_out == "client_gone_mid_stream":
            conn.read_until(lambda e: "content" in e.json)
        record = upstream.wait_for_request(key)
        conn.drop()
        assert record.wait_closed(3)
    assert_slot_free(one_slot_server, upstream, user)
    conn.drop()


def test_a_refused_stream_takes_no_id(one_slot_server: Gunicorn, upstream: FakeUpstream,
                                     shared_redis: SharedRedis) -> None:
    """The slot and the id are claimed in one round trip: a stream refused for its slot gives
    the id back (its record deleted), so Redis holds one record for the one stream admitted."""
    user = new_user()
    key = unique_key("refused-id")
    upstream.add_scenario(key, Scenario(tokens=["a"], first_token_delay=1.0))
    conn = SSEConnection(one_slot_server.url, run_body(key), token=make_token(user))
    assert conn.status == 200
    for _ in range(5):
        status, body = open_second(one_slot_server, user)
        assert status == 429 and b'"code":"too_many_streams"' in body
    assert records_of(shared_redis, user) == 1
    assert content_of(conn.read_all()) == "a"
    conn.drop()


def test_the_slot_is_back_when_the_response_has_ended(one_slot_server: Gunicorn,
                                                     upstream: FakeUpstream) -> None:
    """The slot's release goes with the stream's terminal event, which the response waits for:
    a client that starts its next stream the moment the last one ended is admitted at once,
    on whichever worker it lands, every time."""
    user = new_user()
    key = unique_key("slot-back")
    upstream.add_scenario(key, Scenario(tokens=["a", "b"]))
    statuses = []
    for _ in range(20):
        conn = SSEConnection(one_slot_server.url, run_body(key), token=make_token(user))
        statuses.append(conn.status)
        if conn.status != 200:
            break
        assert content_of(conn.read_all()) == "ab"
        conn.drop()
    assert statuses == [200] * 20


def test_a_dead_worker_does_not_hold_slots_forever(upstream: FakeUpstream,
                                                   shared_redis: SharedRedis) -> None:
    """SIGKILL a worker mid-stream: its lease lapses and the user can stream again."""
    key = unique_key("slot-kill")
    upstream.add_scenario(key, Scenario(tokens=["x"] * 1000, delay=0.05))
    env = quota_env(upstream, **shared_redis.env, AXRISI_MAX_STREAMS_PER_USER="1")
    user = new_user()
    with Gunicorn(env) as server:
        assert server.proc is not None
        attempt = Attempt(server, user, key)
        assert attempt.status == 200 and attempt.worker is not None
        os.kill(attempt.worker, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            workers = children(server.proc.pid)
            if workers and attempt.worker not in workers:
                break
            time.sleep(0.1)
        server.wait_ready()
        assert_slot_free(server, upstream, user, within=10)


def test_token_quota(upstream: FakeUpstream, shared_redis: SharedRedis) -> None:
    """A stream's reported usage is charged; once spent, 429 quota_exceeded with Retry-After."""
    key = unique_key("tokens")
    upstream.add_scenario(key, Scenario(tokens=["a", "b"], usage=(30, 2)))
    env = quota_env(upstream, **shared_redis.env, AXRISI_TOKEN_QUOTA="50/hour")
    user = new_user()
    with Gunicorn(env) as server:
        def run() -> requests.Response:
            return requests.post(server.url + "/api/run", json=run_body(key), timeout=10,
                                 headers={"Authorization": f"Bearer {make_token(user)}"})
        began = time.monotonic()
        first = run()  # the window's first charge starts its hour
        assert first.status_code == 200 and '"promptTokens":30' in first.text  # 32 of 50 spent
        second = run()
        assert second.status_code == 200  # 18 left: admitted, then crosses the line (64 of 50)
        third = run()
        assert third.status_code == 429
        assert third.json()["code"] == "quota_exceeded"
        retry_after = int(third.headers["Retry-After"])  # the counter's own expiry
        assert 3600 - math.ceil(time.monotonic() - began) - 1 <= retry_after <= 3600
        # Refused before a slot or an id was taken: the user's two streams, nothing more.
        assert records_of(shared_redis, user) == 2
        assert shared_redis.client().zcard(keys.stream_slots(user_key(user))) == 0
        other = requests.post(server.url + "/api/run", json=run_body(key), timeout=10,
                              headers={"Authorization": f"Bearer {make_token(new_user())}"})
        assert other.status_code == 200


def test_redis_killed_and_started_again(upstream: FakeUpstream) -> None:
    """Redis dies: streams go on (per-process limits, a warning logged); it returns: shared."""
    key = unique_key("redis-down")
    upstream.add_scenario(key, Scenario(tokens=["still", " streaming"]))
    user = new_user()
    with RedisServer() as redis_server:
        env = quota_env(upstream, redis_server.url, AXRISI_MAX_STREAMS_PER_USER="2",
                        AXRISI_TOKEN_QUOTA="100000/day")
        with Gunicorn(env) as server:
            def run() -> requests.Response:
                return requests.post(server.url + "/api/run", json=run_body(key), timeout=3,
                                     headers={"Authorization": f"Bearer {make_token(user)}"})
            assert run().status_code == 200
            assert redis_server.client().keys("axrisi*")
            redis_server.kill()
            for _ in range(3):
                response = run()
                assert response.status_code == 200
                assert content_text(response.text) == "still streaming"
            assert "Redis is unreachable" in server.log()
            redis_server.start()
            redis_server.client().flushall()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not redis_server.client().keys("axrisi*"):
                assert run().status_code == 200
                time.sleep(0.3)
            assert redis_server.client().keys("axrisi*"), "shared limits never resumed"


def content_text(body: str) -> str:
    from tests.sse_client import parse_all

    events, _ = parse_all([body.encode()])
    return content_of(events)


def test_no_slot_leaked_after_a_hundred_dropped_clients(one_slot_server: Gunicorn,
                                                        upstream: FakeUpstream,
                                                        shared_redis: SharedRedis) -> None:
    """A hundred clients that leave before the first token leak no slot (limit 1 per user)."""

    user = new_user()
    key = unique_key("hundred")
    upstream.add_scenario(key, Scenario(tokens=["x"], hang_after=0))
    admitted = 0
    for _ in range(100):
        conn = open_when_admitted(one_slot_server, user, key, within=3, pause=0.02)
        assert conn.status == 200, f"slot leaked after {admitted} dropped clients"
        admitted += 1
        next(conn.events())
        conn.drop()
    slots = keys.stream_slots(user_key(user))
    deadline = time.monotonic() + 3
    while shared_redis.client().zcard(slots) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shared_redis.client().zcard(slots) == 0
    assert_slot_free(one_slot_server, upstream, user)


def test_a_hung_redis_does_not_hang_requests(upstream: FakeUpstream) -> None:
    """Redis frozen (SIGSTOP): requests are still answered, each well within two seconds."""
    key = unique_key("redis-hung")
    upstream.add_scenario(key, Scenario(tokens=["on"]))
    with RedisServer() as redis_server:
        env = quota_env(upstream, redis_server.url, AXRISI_TOKEN_QUOTA="100000/day")
        with Gunicorn(env) as server:
            assert redis_server.proc is not None
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                for _ in range(3):
                    response = requests.post(
                        server.url + "/api/run", json=run_body(key), timeout=2,
                        headers={"Authorization": f"Bearer {make_token(new_user())}"})
                    assert response.status_code == 200
                    assert content_text(response.text) == "on"
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)


def test_rate_limit_retry_after_is_within_the_window(upstream: FakeUpstream) -> None:
    """3/minute: the 4th request's Retry-After is between 1 and 60 (it said 61: the limits
    package's reset time is already rounded up to the next whole second, and was rounded up
    again), and not less than what is left of the first request's minute."""
    key = unique_key("rate-retry")
    upstream.add_scenario(key, Scenario(tokens=["ok"]))
    user = new_user()
    with Gunicorn(quota_env(upstream, AXRISI_RATE_LIMIT="3/minute")) as server:
        def post() -> requests.Response:
            return post_run(server.url, run_body(key), user)
        # Start just after a whole second, so that all four requests fall within one second:
        # the double rounding then always gave 61 (not only most of the time).
        time.sleep(1.02 - time.time() % 1)
        first_sent = time.time()
        assert [post().status_code for _ in range(3)] == [200, 200, 200]
        limited = post()
        answered = time.time()
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    # The first hit was made after first_sent, so it leaves the window after first_sent + 60.
    assert retry_after >= 60 - math.ceil(answered - first_sent)


def test_rate_limit_retry_after_is_enough(upstream: FakeUpstream) -> None:
    """2 per 3 seconds: Retry-After is at most the window, and a client that waits that long is
    admitted (it is not too small either)."""
    key = unique_key("rate-wait")
    upstream.add_scenario(key, Scenario(tokens=["ok"]))
    user = new_user()
    with Gunicorn(quota_env(upstream, AXRISI_RATE_LIMIT="2 per 3 seconds")) as server:
        def post() -> requests.Response:
            return post_run(server.url, run_body(key), user)
        for _ in range(2):  # two rounds: the rounding depends on where in a second they fall
            statuses = [post().status_code for _ in range(2)]
            limited = post()
            assert statuses == [200, 200] and limited.status_code == 429
            retry_after = int(limited.headers["Retry-After"])
            assert 1 <= retry_after <= 3
            time.sleep(retry_after)
            admitted = post()
            assert admitted.status_code == 200, f"refused after waiting {retry_after} s"
            time.sleep(3.05)  # let that hit leave the window before the next round
