"""Resumable streams and shared limits while Redis misbehaves, on two instances sharing it.

Redis sits behind the tests' own :class:`FaultProxy`, so a stall, added latency, a stopped or a
killed redis-server starts and ends when the test says. Clients stream on one instance, drop the
connection at a random token and resume on the other with ``Last-Event-ID``, the way a browser
tab behind a load balancer does, while the fault begins. The contract they hold the service to:

* every stream arrives exactly once and in order, to its ``done`` event, however many
  reconnects it takes;
* a resume the service cannot judge right now (Redis not answering) gets ``503 unavailable``
  with ``Retry-After``, never ``404`` for a stream that is alive;
* a 200 that ends without a terminal event is simply resumed again, as ``EventSource`` would.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis
import requests

from tests.fake_upstream import FakeUpstream, Scenario
from tests.sse_client import Event

from .client import SSEConnection, content_of, make_token, post_run
from .faultproxy import FaultProxy
from .procnet import children, worker_holding
from .redis_server import RedisServer
from .servers import Gunicorn
from .test_stream import run_body, unique_key

SETTINGS = {"AXRISI_RESUME_GRACE_SECONDS": "5", "AXRISI_MAX_STREAMS_PER_USER": "0",
            "AXRISI_RATE_LIMIT": "100000/minute", "AXRISI_HEARTBEAT_SECONDS": "0.5",
            "AXRISI_UPSTREAM_TIMEOUT_SECONDS": "10", "AXRISI_STREAM_LEASE_SECONDS": "6"}

STREAMS = 18
TOKENS = 30
TOKEN_DELAY = 0.05  # ~1.5 s per stream
STAGGER = 1.0  # the streams start over this long
FAULT_AT = 0.4  # after the first start: drops and resumes fall before, in and after the fault
DEADLINE = 20.0  # per stream: later than this it "never ended"
SILENCE = 5.0  # heartbeats come every 0.5 s: this long without a byte is a dead connection
RECOVERY = 1.5  # after a fault, before the next scenario: the instances' Redis back-off


class DeadlinePassed(Exception):
    """The stream's deadline passed while a response was still open."""


def env_for(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k", **SETTINGS, **extra}


# Fixtures: one redis-server, one proxy and one pair of instances for the module -------------


@pytest.fixture(scope="module")
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture(scope="module")
def pair(upstream: FakeUpstream, proxy: FaultProxy) -> Iterator[tuple[Gunicorn, Gunicorn]]:
    """Two instances, one gevent worker each, sharing Redis through the proxy."""
    env = env_for(upstream, REDIS_URL=proxy.url)
    with Gunicorn(env) as first, Gunicorn(env) as second:
        yield first, second


@pytest.fixture(scope="module")
def short_grace_pair(upstream: FakeUpstream, proxy: FaultProxy
                     ) -> Iterator[tuple[Gunicorn, Gunicorn]]:
    """Two instances whose grace (3 s) is no longer than the faults: it runs out while the
    generating worker cannot see whether a reader came back on the other instance."""
    env = env_for(upstream, REDIS_URL=proxy.url, AXRISI_RESUME_GRACE_SECONDS="3")
    with Gunicorn(env) as first, Gunicorn(env) as second:
        yield first, second


@pytest.fixture()
def healthy(proxy: FaultProxy, redis_server: RedisServer) -> Iterator[None]:
    """Each test starts with the proxy passing bytes and redis-server up and answering, and
    leaves them so, with time for the instances to notice Redis is back."""
    restore(proxy, redis_server)
    yield
    restore(proxy, redis_server)
    time.sleep(RECOVERY)


def restore(proxy: FaultProxy, redis_server: RedisServer) -> None:
    """Undo any fault: no stall or latency, redis-server running (continued or started)."""
    proxy.heal()
    if redis_server.running:
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    else:
        redis_server.start()
    through = redis.Redis.from_url(proxy.url, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            if through.ping():
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            through.close()


# The faults: each runs in its own thread, FAULT_AT seconds after the first stream starts --------


def no_fault(proxy: FaultProxy, redis_server: RedisServer) -> None:
    """Healthy: the baseline every other scenario is compared with."""


def short_stall(proxy: FaultProxy, redis_server: RedisServer) -> None:
    proxy.stall(0.3)


def added_latency(proxy: FaultProxy, redis_server: RedisServer) -> None:
    proxy.set_latency(0.1)
    time.sleep(2.0)
    proxy.set_latency(0)


def long_stall(proxy: FaultProxy, redis_server: RedisServer) -> None:
    proxy.stall(2.0)


def stopped_redis(proxy: FaultProxy, redis_server: RedisServer) -> None:
    """SIGSTOP: connections stay open and nothing answers (a frozen VM, a long fork)."""
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(3.0)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def killed_redis(proxy: FaultProxy, redis_server: RedisServer) -> None:
    """A crash: connections reset, nothing listens, then an empty redis-server on the same port."""
    redis_server.kill()
    time.sleep(3.0)
    redis_server.start()


Fault = Callable[[FaultProxy, RedisServer], None]


# One client stream: stream, drop, resume until a terminal event ---------------------------------


@dataclass
class StreamRun:
    """What one client saw over all its connections, for the verdict and the diagnostics."""

    index: int
    drop_after: int
    tokens: list[str]
    user: str = field(default_factory=lambda: f"fault-{uuid.uuid4().hex[:8]}")
    events: list[Event] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    not_found: int = 0
    never_ended: bool = False
    gave_up: str | None = None  # an answer outside the contract, or a crash of the client
    started: float = 0.0

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:5.2f}s {text}")

    @property
    def terminal(self) -> bool:
        return bool(self.events) and is_terminal(self.events[-1])

    def verdict(self) -> str | None:
        """None when the stream arrived exactly once, in order, to ``done``; else why not."""
        if self.gave_up:
            return self.gave_up
        ids = [event.id for event in self.events]
        if not ids or ids[0] is None:
            return "no event"
        stream_id = ids[0].rpartition("-")[0]
        expected = [f"{stream_id}-{n}" for n in range(len(ids))]
        if ids != expected:
            wrong = next(n for n, (a, b) in enumerate(zip(ids, expected, strict=True)) if a != b)
            return f"event {wrong} has id {ids[wrong]}, expected {expected[wrong]}"
        if not self.terminal:
            return "no terminal event"
        last = self.events[-1]
        if last.event != "message":
            return f"ended with event {last.event}: {last.data}"
        if content_of(self.events) != "".join(self.tokens):
            return "the text differs from the tokens"
        return None

    def describe(self) -> str:
        return (f"stream {self.index} (user {self.user}, drop after {self.drop_after}, "
                f"{len(self.events)} events): {self.verdict()}\n    " + "\n    ".join(self.log))


def is_terminal(event: Event) -> bool:
    return event.event == "error" or (event.event == "message" and event.json.get("done") is True)


def read_events(conn: SSEConnection, deadline: float) -> Iterator[Event]:
    """The response's events until it ends; DeadlinePassed once ``deadline`` is past (checked at
    every chunk: heartbeats keep chunks coming), TimeoutError after SILENCE s without a byte."""
    while True:
        if time.monotonic() > deadline:
            raise DeadlinePassed
        chunk = conn.response.read1(65536)
        if not chunk:
            return
        conn.raw += chunk
        yield from conn.parser.feed(chunk)


def read_into(run: StreamRun, conn: SSEConnection, deadline: float,
              drop_after: int | None = None) -> str:
    """Append the response's events to ``run`` until a terminal event, ``drop_after`` content
    events, its end or a failure; the connection is dropped either way. Says how it ended."""
    contents, count = 0, 0
    try:
        for event in read_events(conn, deadline):
            run.events.append(event)
            count += 1
            if is_terminal(event):
                return f"{count} events, terminal {event.event}"
            contents += event.event == "message" and "content" in event.json
            if drop_after is not None and contents >= drop_after:
                return f"{count} events, dropped by the client"
        return f"{count} events, ended without a terminal event"
    except DeadlinePassed:
        return f"{count} events, deadline passed"
    except (OSError, http.client.HTTPException) as error:
        return f"{count} events, broke: {error!r}"
    finally:
        conn.drop()


def answer_body(conn: SSEConnection) -> dict[str, object]:
    try:
        body = json.loads(conn.response.read() or b"{}")
    except (OSError, ValueError, http.client.HTTPException):
        body = {}
    finally:
        conn.drop()
    return body if isinstance(body, dict) else {}


def retry_after(conn: SSEConnection, body: dict[str, object]) -> float | None:
    """Seconds to wait for a well-formed ``503 unavailable``, None for any other answer."""
    try:
        seconds = float(conn.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if conn.status == 503 and body.get("code") == "unavailable" else None


def stream_with_drop(run: StreamRun, servers: tuple[Gunicorn, Gunicorn],
                     upstream: FakeUpstream, start_at: float) -> None:
    """POST on servers[0], drop after ``run.drop_after`` contents, resume until terminal."""
    key = unique_key(f"fault{run.index}")
    upstream.add_scenario(key, Scenario(tokens=run.tokens, delay=TOKEN_DELAY))
    token = make_token(run.user)
    time.sleep(max(0.0, start_at - time.monotonic()))
    run.started = time.monotonic()
    deadline = run.started + DEADLINE
    try:
        conn = SSEConnection(servers[0].url, run_body(key), token=token, timeout=SILENCE)
    except OSError as error:
        run.gave_up = f"POST failed: {error!r}"
        return
    if conn.status != 200:
        run.gave_up = f"POST answered {conn.status} {answer_body(conn)}"
        return
    run.note(f"POST {servers[0].port} 200: " + read_into(run, conn, deadline, run.drop_after))
    resume_until_terminal(run, servers, token, deadline)


def resume_until_terminal(run: StreamRun, servers: tuple[Gunicorn, Gunicorn], token: str,
                          deadline: float) -> None:
    """Resume from the last id, alternating instances, until a terminal event or the deadline."""
    turn = 1
    while not run.terminal:
        if time.monotonic() > deadline:
            run.never_ended = True
            run.note("deadline passed")
            return
        if not run.events or run.events[-1].id is None:
            run.gave_up = "no event id to resume from"
            return
        server = servers[turn % 2]
        turn += 1
        last_id = run.events[-1].id
        stream_id = last_id.rpartition("-")[0]
        try:
            conn = SSEConnection(server.url, None, token=token, method="GET",
                                 path=f"/api/streams/{stream_id}",
                                 headers={"Last-Event-ID": last_id}, timeout=SILENCE)
        except OSError as error:
            run.note(f"GET {server.port} from {last_id}: no answer: {error!r}")
            time.sleep(0.2)
            continue
        if conn.status == 200:
            run.note(f"GET {server.port} from {last_id} 200: " + read_into(run, conn, deadline))
            continue
        body = answer_body(conn)
        run.note(f"GET {server.port} from {last_id} {conn.status} "
                 f"Retry-After={conn.headers.get('Retry-After')} {body}")
        wait = retry_after(conn, body)
        if wait is not None:
            time.sleep(min(wait, 1.0))
        elif conn.status == 404:
            run.not_found += 1
            run.gave_up = "404 for a live stream"
            return
        else:
            run.gave_up = f"unexpected answer {conn.status} {body}"
            return


def guarded(run: StreamRun, target: Callable[[], None]) -> Callable[[], None]:
    """A thread body that records a crash of the test client instead of losing it."""
    def body() -> None:
        try:
            target()
        except Exception:  # noqa: BLE001 - reported as this stream's verdict
            run.gave_up = "client crashed:\n" + traceback.format_exc()
    return body


def run_scenario(pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream, proxy: FaultProxy,
                 redis_server: RedisServer, fault: Fault, seed: int) -> list[StreamRun]:
    """STREAMS staggered streams with drops, and the fault FAULT_AT s after the first start."""
    rng = random.Random(seed)
    runs = [StreamRun(i, rng.randint(1, TOKENS - 2), [f"s{i}.{j} " for j in range(TOKENS)])
            for i in range(STREAMS)]
    t0 = time.monotonic() + 0.2
    threads = []
    for run in runs:
        servers = pair if run.index % 2 == 0 else (pair[1], pair[0])
        start_at = t0 + run.index * STAGGER / STREAMS
        threads.append(threading.Thread(target=guarded(run, lambda r=run, s=servers, t=start_at:
                                                       stream_with_drop(r, s, upstream, t))))

    def delayed_fault() -> None:
        time.sleep(max(0.0, t0 + FAULT_AT - time.monotonic()))
        fault(proxy, redis_server)

    fault_thread = threading.Thread(target=delayed_fault)
    for thread in [fault_thread, *threads]:
        thread.start()
    for thread in [fault_thread, *threads]:
        thread.join(DEADLINE + 15)
    return runs


def log_tail(server: Gunicorn, lines: int = 40) -> str:
    return "\n".join(server.log().splitlines()[-lines:])


def summary(runs: list[StreamRun]) -> str:
    """One line on what the clients went through: proof that the fault bit."""
    lines = [line for run in runs for line in run.log]
    return (f"{len(runs)} streams, {sum(' GET ' in line for line in lines)} resumes: "
            f"{sum(' 503 ' in line for line in lines)} answered 503, "
            f"{sum('without a terminal' in line for line in lines)} 200s ended early, "
            f"{sum('no answer' in line or 'broke' in line for line in lines)} broken")


def failure_report(runs: list[StreamRun], servers: tuple[Gunicorn, ...]) -> str:
    bad = [run for run in runs if run.verdict() is not None]
    text = [f"{len(bad)}/{len(runs)} not exact, {sum(run.not_found for run in runs)} 404s, "
            f"{sum(run.never_ended for run in runs)} never ended; {summary(runs)}"]
    text += [run.describe() for run in bad]
    for server in servers:
        text.append(f"--- tail of the log of the instance on port {server.port} ---")
        text.append(log_tail(server))
    return "\n".join(text)


# The tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [no_fault, short_stall, added_latency, long_stall,
                                   stopped_redis, killed_redis],
                         ids=["healthy", "stall-300ms", "latency-100ms-2s", "stall-2s",
                              "sigstop-3s", "killed-3s"])
def test_drops_resumed_across_instances_through_a_redis_fault(
        fault: Fault, pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream,
        proxy: FaultProxy, redis_server: RedisServer, healthy: None) -> None:
    """Streams dropped before, during and after the fault, resumed on the other instance (503:
    wait and retry; a 200 that ends early: resume again): all exact, no 404, none unended."""
    seed = sum(map(ord, fault.__name__))  # a fixed plan of drops per scenario
    runs = run_scenario(pair, upstream, proxy, redis_server, fault, seed)
    exact = all(run.verdict() is None for run in runs)
    not_found = sum(run.not_found for run in runs)
    never_ended = sum(run.never_ended for run in runs)
    print(f"\n{fault.__name__}: {summary(runs)}")
    report = failure_report(runs, pair)
    if not (exact and not_found == 0 and never_ended == 0):
        print(report)
    assert exact and not_found == 0 and never_ended == 0, report


@pytest.mark.parametrize("fault", [stopped_redis, killed_redis], ids=["sigstop-3s", "killed-3s"])
def test_a_grace_never_runs_out_while_the_worker_cannot_see_redis(
        fault: Fault, short_grace_pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream,
        proxy: FaultProxy, redis_server: RedisServer, healthy: None) -> None:
    """A 3 s grace and a 3 s outage: the generating worker cannot tell whether a reader came
    back elsewhere, so it goes on until it can; every stream resumed on the other instance
    after its 503s is exact (none ends ``cancelled``)."""
    seed = sum(map(ord, fault.__name__)) + 1
    runs = run_scenario(short_grace_pair, upstream, proxy, redis_server, fault, seed)
    report = failure_report(runs, short_grace_pair)
    print(f"\n{fault.__name__}, 3 s grace: {summary(runs)}")
    assert all(run.verdict() is None for run in runs), report


def test_the_grace_counts_only_while_redis_answers(
        short_grace_pair: tuple[Gunicorn, Gunicorn], upstream: FakeUpstream, proxy: FaultProxy,
        healthy: None) -> None:
    """Dropped at t=0, Redis stalled from 0.5 s to 2.5 s, the reader back on the other
    instance at 3.6 s (its 503s behind it): the 3 s grace, running out at 3 s, must not take
    "nobody attached" from a Redis that was unreachable for most of it. The rest arrives."""
    first, second = short_grace_pair
    key = unique_key("grace-stall")
    tokens = [f"g{i} " for i in range(60)]
    upstream.add_scenario(key, Scenario(tokens=tokens, delay=0.1))
    token = make_token(f"grace-{uuid.uuid4().hex[:8]}")
    conn = SSEConnection(first.url, run_body(key), token=token, timeout=SILENCE)
    seen: list[Event] = []
    for event in conn.events():
        seen.append(event)
        if sum("content" in e.json for e in seen) == 3:
            break
    conn.drop()
    dropped_at = time.monotonic()
    time.sleep(0.5)
    proxy.stall(2.0)
    time.sleep(max(0.0, dropped_at + 3.6 - time.monotonic()))
    stream_id = seen[-1].id.rpartition("-")[0]
    deadline = time.monotonic() + 15
    while True:
        resumed = SSEConnection(second.url, None, token=token, method="GET",
                                path=f"/api/streams/{stream_id}",
                                headers={"Last-Event-ID": seen[-1].id}, timeout=SILENCE)
        if resumed.status == 200 or time.monotonic() > deadline:
            break
        assert resumed.status == 503, resumed.status
        resumed.drop()
        time.sleep(0.2)
    assert resumed.status == 200
    rest = resumed.read_all()
    assert rest[-1].json.get("done") is True, (rest[-1].event, rest[-1].data)
    assert content_of(seen + rest) == "".join(tokens)


def test_shared_rate_limit_holds_again_after_a_stall(upstream: FakeUpstream, proxy: FaultProxy,
                                                     redis_server: RedisServer,
                                                     healthy: None) -> None:
    """After a 2 s stall that both instances lived through, 5/minute is again 5 in total."""
    key = unique_key("limit")
    upstream.add_scenario(key, Scenario(tokens=["ok"]))
    env = env_for(upstream, REDIS_URL=proxy.url, AXRISI_RATE_LIMIT="5/minute")

    def post(server: Gunicorn, user: str) -> requests.Response:
        return post_run(server.url, run_body(key), user)

    with Gunicorn(env) as first, Gunicorn(env) as second:
        for server in (first, second):
            post(server, f"warm-{uuid.uuid4().hex[:8]}")  # pooled connections to Redis
        stalled_at = time.monotonic()
        proxy.stall(2.0)
        for server in (first, second):  # both serve a request while Redis does not answer
            post(server, f"bystander-{uuid.uuid4().hex[:8]}")
        time.sleep(max(0.0, stalled_at + 2.0 + 1.5 - time.monotonic()))
        user = f"limited-{uuid.uuid4().hex[:8]}"
        answers = [post((first, second)[i % 2], user) for i in range(12)]
        statuses = [answer.status_code for answer in answers]
        limited = [answer for answer in answers if answer.status_code != 200]
        logs = f"\n{log_tail(first)}\n---\n{log_tail(second)}"
        assert statuses.count(200) == 5, f"{statuses}{logs}"
        assert all(answer.status_code == 429 and answer.json().get("code") == "rate_limited"
                   for answer in limited), f"{[(a.status_code, a.text) for a in limited]}{logs}"


def test_rate_limit_while_redis_is_stopped_is_one_limit_per_instance(
        upstream: FakeUpstream, redis_server: RedisServer, healthy: None) -> None:
    """6/minute, two workers, Redis frozen (SIGSTOP): the workers count their shares (3 each) in
    memory, so the instance lets through at most one limit, not one fresh limit per worker (12
    before); streams still start; and once Redis answers, it counts again (its own 6)."""
    key = unique_key("outage-limit")
    upstream.add_scenario(key, Scenario(tokens=["ok"]))
    env = env_for(upstream, REDIS_URL=redis_server.url, AXRISI_RATE_LIMIT="6/minute")
    user = f"outage-{uuid.uuid4().hex[:8]}"
    with Gunicorn(env, workers=2) as server:
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            during = attempts_on_both_workers(server, user, key)
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        allowed = {worker: [a.status for a in during if a.worker == worker].count(200)
                   for worker in {a.worker for a in during}}
        assert len(allowed) == 2, f"both workers must serve: {allowed}"
        assert all(1 <= count <= 3 for count in allowed.values()), allowed
        assert sum(allowed.values()) <= 6
        time.sleep(1.5)  # the breaker's second, then Redis is asked again
        after = [attempt_status(server, user, key) for _ in range(10)]
        metrics = requests.get(server.url + "/metrics", timeout=5).text
    # What the outage cost is visible: the fallbacks taken, by operation.
    assert fallbacks(metrics, "rate_limit") >= 2, metrics
    # The outage's hits were counted in memory only: Redis still holds the whole limit.
    assert after.count(200) == 6 and after.count(429) == 4, after


def fallbacks(metrics: str, operation: str) -> float:
    """``axrisi_redis_fallbacks_total{operation=...}`` from a Prometheus text page."""
    prefix = f'axrisi_redis_fallbacks_total{{operation="{operation}"}} '
    return sum(float(line[len(prefix):]) for line in metrics.splitlines()
               if line.startswith(prefix))


@dataclass
class Attempt:
    status: int
    worker: int | None


def attempts_on_both_workers(server: Gunicorn, user: str, key: str) -> list[Attempt]:
    """POSTs on fresh connections until both workers answered at least 5 (at most 40)."""
    assert server.proc is not None
    attempts: list[Attempt] = []
    while len(attempts) < 40:
        conn = SSEConnection(server.url, run_body(key), token=make_token(user), timeout=10)
        assert conn.conn.sock is not None
        client_port = conn.conn.sock.getsockname()[1]
        worker = worker_holding(server.proc.pid, server.port, client_port)
        attempts.append(Attempt(conn.status, worker))
        conn.response.read()
        conn.drop()
        per_worker = [a.worker for a in attempts]
        if len({w for w in per_worker if w}) == 2 and \
                min(per_worker.count(w) for w in set(per_worker)) >= 5:
            break
    return attempts


def attempt_status(server: Gunicorn, user: str, key: str) -> int:
    return post_run(server.url, run_body(key), user).status_code


def read_until(conn: SSEConnection, predicate: Callable[[Event], bool],
               within: float) -> list[Event]:
    """Events until one satisfies ``predicate``; fails if that takes longer than ``within`` s."""
    seen: list[Event] = []
    try:
        for event in read_events(conn, time.monotonic() + within):
            seen.append(event)
            if predicate(event):
                return seen
    except DeadlinePassed:
        pass
    raise AssertionError(f"not seen within {within} s; got {[(e.id, e.data) for e in seen]}")


def read_to_end(conn: SSEConnection, within: float) -> list[Event]:
    """Every event until the response ends; fails if it is still open after ``within`` s."""
    seen: list[Event] = []
    try:
        seen.extend(read_events(conn, time.monotonic() + within))
    except DeadlinePassed:
        raise AssertionError(f"the response did not end within {within} s; got "
                             f"{[(e.id, e.data) for e in seen]}") from None
    return seen


def contents(count: int) -> Callable[[Event], bool]:
    """A predicate true at the ``count``-th content event."""
    seen = [0]

    def predicate(event: Event) -> bool:
        seen[0] += event.event == "message" and "content" in event.json
        return seen[0] >= count
    return predicate


def test_killed_generating_worker(upstream: FakeUpstream, redis_server: RedisServer,
                                  proxy: FaultProxy, healthy: None) -> None:
    """SIGKILL of the worker that generates a stream while another instance follows it: the
    follower ends with ``internal`` once the lease lapses, a resume replays that end, and the
    user's one open-stream slot comes back."""
    check_killed_generating_worker(upstream, redis_server.env)


def check_killed_generating_worker(upstream: FakeUpstream, redis_env: dict[str, str]) -> None:
    """The body of :func:`test_killed_generating_worker`, on one Redis or a cluster."""
    lease, grace = 3.0, 5.0
    key = unique_key("killed")
    upstream.add_scenario(key, Scenario(tokens=[f"k{i} " for i in range(1000)], delay=0.1))
    env = env_for(upstream, **redis_env, AXRISI_STREAM_LEASE_SECONDS=str(lease),
                  AXRISI_RESUME_GRACE_SECONDS=str(grace), AXRISI_MAX_STREAMS_PER_USER="1")
    user = f"killed-{uuid.uuid4().hex[:8]}"
    token = make_token(user)
    with Gunicorn(env) as first, Gunicorn(env) as second:
        conn = SSEConnection(first.url, run_body(key), token=token)
        seen = read_until(conn, contents(3), within=5)
        workers = children(first.proc.pid) if first.proc else []
        assert len(workers) == 1, workers
        conn.drop()
        stream_id = seen[-1].id.rpartition("-")[0]
        path = f"/api/streams/{stream_id}"
        follower = SSEConnection(second.url, None, token=token, method="GET", path=path,
                                 headers={"Last-Event-ID": seen[-1].id})
        assert follower.status == 200
        followed = read_until(follower, contents(2), within=5)
        os.kill(workers[0], signal.SIGKILL)
        killed_at = time.monotonic()
        logs = lambda: f"\n{log_tail(first)}\n---\n{log_tail(second)}"  # noqa: E731
        try:
            tail = read_until(follower, is_terminal, within=lease + 5)
        except AssertionError as error:
            raise AssertionError(f"{error}{logs()}") from None
        error_event = tail[-1]
        assert error_event.event == "error" and error_event.json["code"] == "internal", logs()
        assert read_to_end(follower, within=3) == [], "events after the terminal one"
        follower.drop()

        asked = time.monotonic()
        again = SSEConnection(second.url, None, token=token, method="GET", path=path,
                              headers={"Last-Event-ID": seen[-1].id})
        assert again.status == 200
        replay = read_to_end(again, within=3)
        assert time.monotonic() - asked < 2.0, "the replay of an ended stream was slow"
        assert [e.id for e in replay] == [e.id for e in followed + tail]
        assert (replay[-1].event, replay[-1].data) == (error_event.event, error_event.data)
        after_end = requests.get(second.url + path, timeout=5, headers={
            "Authorization": f"Bearer {token}", "Last-Event-ID": error_event.id})
        assert after_end.status_code == 204 or (after_end.status_code == 200
                                                and "data:" not in after_end.text)

        done_key = unique_key("after-kill")
        upstream.add_scenario(done_key, Scenario(tokens=["ok"]))
        answers = []
        while True:
            answer = requests.post(second.url + "/api/run", json=run_body(done_key), timeout=10,
                                   headers={"Authorization": f"Bearer {token}"})
            answers.append(answer.status_code)
            if answer.status_code == 200 or time.monotonic() > killed_at + lease + 5:
                break
            assert answer.status_code == 429, answer.text
            time.sleep(0.3)
        assert answer.status_code == 200, f"the slot did not come back: {answers}{logs()}"
