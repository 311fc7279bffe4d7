"""The fault proxy that the Redis fault tests rely on, checked against a real redis-server.

A fault test is only as good as its faults: if a "stall" let bytes through, or a "cut" left the
connection open, the service would pass for the wrong reason. Each fault is measured here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.e2e.faultproxy import FaultProxy
from tests.e2e.redis_server import RedisServer


@pytest.fixture()
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture()
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.port) as fault_proxy:
        yield fault_proxy


def client(proxy: FaultProxy, timeout: float = 3.0) -> redis.Redis:
    """A client through the proxy that does not retry: every fault must reach it as is."""
    return redis.Redis.from_url(proxy.url, socket_timeout=timeout,
                                socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


def timed_ping(r: redis.Redis) -> float:
    """PING; returns when (monotonic) the answer arrived."""
    assert r.ping() is True
    return time.monotonic()


def test_ping_through_the_proxy(proxy: FaultProxy) -> None:
    r = client(proxy)
    assert r.ping() is True
    r.set("k", "v" * 100_000)
    assert r.get("k") == b"v" * 100_000
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"


def test_stall_holds_bytes_until_its_end(proxy: FaultProxy) -> None:
    """A PING sent in a stall, on an old or a new connection, is answered after the stall."""
    old = client(proxy)
    old.ping()
    started = time.monotonic()
    proxy.stall(0.5)
    assert time.monotonic() - started < 0.05, "stall() must not block"
    new = client(proxy)
    answers: list[float] = []
    thread = threading.Thread(target=lambda: answers.append(timed_ping(new)))
    thread.start()
    assert timed_ping(old) >= started + 0.5
    thread.join(3)
    assert answers and answers[0] >= started + 0.5
    assert time.monotonic() - started < 1.0, "the held bytes were not delivered at the end"
    assert old.echo("after") == b"after"


def test_latency_delays_both_directions(proxy: FaultProxy) -> None:
    r = client(proxy)
    r.ping()
    proxy.set_latency(0.1)
    started = time.monotonic()
    assert timed_ping(r) - started >= 0.2
    proxy.set_latency(0)
    started = time.monotonic()
    assert timed_ping(r) - started < 0.1


def test_cut_resets_pending_clients_and_accepts_new_ones(proxy: FaultProxy) -> None:
    pending = client(proxy, timeout=5)
    pending.ping()
    errors: list[BaseException] = []

    def blocked_pop() -> None:
        try:
            pending.blpop(["never"], timeout=4)
        except redis.RedisError as error:
            errors.append(error)

    thread = threading.Thread(target=blocked_pop)
    thread.start()
    time.sleep(0.2)
    cut_at = time.monotonic()
    proxy.cut()
    thread.join(3)
    assert not thread.is_alive() and time.monotonic() - cut_at < 1.0
    assert errors and isinstance(errors[0], redis.ConnectionError)
    assert client(proxy).ping() is True


def test_target_down_then_back(proxy: FaultProxy, redis_server: RedisServer) -> None:
    """While redis-server is gone a new connection is closed at once; once back, it works."""
    r = client(proxy)
    r.ping()
    redis_server.kill()
    with pytest.raises(redis.ConnectionError):
        r.ping()  # the old connection was closed with the target's
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client(proxy).ping()
    assert time.monotonic() - started < 1.0
    redis_server.start()
    assert client(proxy).ping() is True
    assert r.ping() is True  # redis-py reconnects on its next command
