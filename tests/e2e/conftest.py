"""Fixtures for end-to-end tests: the fake upstream and the real gunicorn serving against it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_upstream import FakeUpstream

from .redis_cluster import RedisCluster
from .redis_server import RedisServer
from .servers import Gunicorn

UPSTREAM_KEY = "sk-test-upstream-key-0123456789"

FAST_SETTINGS = {
    "AXRISI_HEARTBEAT_SECONDS": "0.4",
    "AXRISI_UPSTREAM_TIMEOUT_SECONDS": "2",
    "AXRISI_SEND_TIMEOUT_SECONDS": "2",
    "AXRISI_MODEL": "test-model",
    # The shared server's tests are not about quotas (test_quotas.py starts its own servers).
    "AXRISI_MAX_STREAMS_PER_USER": "0",
    "AXRISI_RATE_LIMIT": "100000/minute",
    # Many of its tests send bad tokens on purpose; test_login_guard.py tests the limit.
    "AXRISI_AUTH_FAILURE_LIMIT": "100000/minute",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e/ runs real servers: mark it so ``-m "not e2e"`` skips it."""
    for item in items:
        if "/tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on loopback, one per test module (a skip on a laptop without it, a
    failure under CI=true)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module", params=["redis", "cluster"])
def shared_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer | RedisCluster]:
    """The shared state's tests run twice: on one real redis-server, and on a real Redis Cluster
    of three masters and three replicas (``AXRISI_REDIS_CLUSTER=1``). Both give ``env``, the
    service's settings for them, and ``client()``."""
    with (RedisServer() if request.param == "redis" else RedisCluster()) as shared:
        yield shared


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    """A real OpenAI-compatible HTTP server on loopback."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="session")
def server(upstream: FakeUpstream) -> Iterator[Gunicorn]:
    """The service under gunicorn + gevent, talking to the fake upstream with short timeouts."""
    env = {**FAST_SETTINGS, "OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": UPSTREAM_KEY}
    with Gunicorn(env) as gunicorn:
        yield gunicorn


@pytest.fixture(scope="session")
def local_server() -> Iterator[Gunicorn]:
    """The service on its built-in local provider (no key, no base URL)."""
    with Gunicorn({"AXRISI_LOCAL_PACE_SECONDS": "0.001"}) as gunicorn:
        yield gunicorn
