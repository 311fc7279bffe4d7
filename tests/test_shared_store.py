"""The Redis fault model's decisions: slow is not down, one wait per request, answers are answers.

The operations here raise the exceptions redis-py raises, so that the breaker's rules can be
checked one by one; tests/e2e/test_redis_faults.py holds the whole service to them against a
real redis-server behind a fault-injecting proxy.
"""

from __future__ import annotations

from collections.abc import Callable

import gevent
import pytest
import redis

from axrisi.shared import store as shared
from axrisi.shared.store import SharedStore
from axrisi.web.resume import resume_position


def store() -> SharedStore:
    return SharedStore("redis://127.0.0.1:1/0")  # never contacted by these tests


def raising(error: BaseException) -> Callable[[object], str]:
    def operation(_client: object) -> str:
        raise error
    return operation


def answer(_client: object) -> str:
    return "redis"


def fallback() -> str:
    return "fallback"


def test_one_slow_reply_does_not_open_the_breaker() -> None:
    s = store()
    assert s.run(raising(redis.TimeoutError()), fallback) == "fallback"
    assert s.up and not s.open
    assert s.run(answer, fallback) == "redis"


def test_consecutive_timeouts_open_the_breaker() -> None:
    s = store()
    for _ in range(shared.TIMEOUTS_TO_OPEN):
        s.run(raising(redis.TimeoutError()), fallback)
    assert not s.up and s.open
    assert s.run(answer, fallback) == "fallback"  # not even tried while open


def test_a_success_between_timeouts_resets_the_count() -> None:
    s = store()
    for _ in range(shared.TIMEOUTS_TO_OPEN - 1):
        s.run(raising(redis.TimeoutError()), fallback)
    s.run(answer, fallback)
    s.run(raising(redis.TimeoutError()), fallback)
    assert s.up


def test_a_refused_connection_opens_it_at_once_and_it_closes_on_success(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = store()
    seen: list[bool] = []
    s.listeners.append(seen.append)
    s.run(raising(redis.ConnectionError()), fallback)
    assert s.open and seen == [False]
    monkeypatch.setattr(shared, "RETRY_AFTER_FAILURE_SECONDS", 0.0)
    s._down_until = 0.0  # the second has passed
    assert s.run(answer, fallback) == "redis"
    assert s.up and seen == [False, True]


def test_an_answer_is_not_an_outage() -> None:
    s = store()
    with pytest.raises(redis.ResponseError):
        s.run(raising(redis.ResponseError("WRONGTYPE")), fallback)
    assert s.up


def test_a_request_waits_once() -> None:
    """After one timed-out check, the same request's other checks fall back at once; another
    request (greenlet), and background work, still ask Redis."""
    s = store()
    calls: list[str] = []

    def counted(_client: object) -> str:
        calls.append("asked")
        return "redis"

    def request() -> list[str]:
        s.begin_request()
        first = s.run(raising(redis.TimeoutError()), fallback, check=True)
        second = s.run(counted, fallback, check=True)
        background = s.run(counted, fallback)
        return [first, second, background]

    assert gevent.spawn(request).get() == ["fallback", "fallback", "redis"]
    assert gevent.spawn(lambda: s.run(counted, fallback, check=True)).get() == "redis"
    assert calls == ["asked", "asked"]


@pytest.mark.parametrize("last_event_id", ["5-1¹", "5-²", "5-³", "5-١", "5-1 2", "5--1",
                                           "5-1234567890123"])
def test_last_event_ids_that_are_not_ids_are_400(last_event_id: str) -> None:
    from axrisi.web.errors import ApiError

    with pytest.raises(ApiError) as raised:
        resume_position(5, last_event_id)
    assert raised.value.code == 400


def test_last_event_id_positions() -> None:
    assert resume_position(5, None) == 0
    assert resume_position(5, " ") == 0
    assert resume_position(5, "5-0") == 1
    assert resume_position(5, "5-41") == 42


def test_every_client_gets_the_tls_options() -> None:
    """The store's clients, its blocking readers, the rate limit's storage and the token
    quota's own limits storage all connect with the TLS options (AXRISI_REDIS_CA_FILE, ...)."""
    from axrisi.config import Settings
    from axrisi.shared.counters import TokenQuota
    from axrisi.shared.limitstore import SCHEME, SharedLimitStorage

    url = "rediss://:pw@127.0.0.1:1/0"  # never contacted
    tls = Settings.from_env({"JWT_SECRET_KEY": "s" * 32, "REDIS_URL": url,
                             "AXRISI_REDIS_TLS_VERIFY": "0"}).redis_tls_options()
    s = SharedStore(url, tls=tls)
    quota = TokenQuota("100/day", s)
    limits_storage: SharedLimitStorage = SharedLimitStorage(SCHEME + url, store=s)
    quota_storage = quota._shared_limiter(s).storage
    pools = [s.client.connection_pool, s.background.connection_pool,
             s.reader(1.0).connection_pool, quota_storage.storage.connection_pool,
             limits_storage.redis.storage.connection_pool]
    for pool in pools:
        assert pool.connection_class is redis.SSLConnection
        assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
        assert pool.connection_kwargs["ssl_check_hostname"] is False
    assert s.options(1.0)["socket_timeout"] == 1.0  # the deadlines stay
