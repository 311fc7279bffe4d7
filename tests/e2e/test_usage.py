"""GET /api/usage: the caller's limits and what is left, as the 429s then enforce them,
shared across two instances through Redis."""

from __future__ import annotations

import time
import uuid

import requests

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, make_token, post_run
from .redis_cluster import SharedRedis
from .servers import Gunicorn
from .test_stream import run_body, unique_key


def usage(server: Gunicorn, user: str) -> dict:
    answer = requests.get(server.url + "/api/usage", timeout=5,
                          headers={"Authorization": f"Bearer {make_token(user)}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_usage_follows_the_limits_across_instances(upstream: FakeUpstream,
                                                   shared_redis: SharedRedis) -> None:
    fast, slow = unique_key("usage-fast"), unique_key("usage-slow")
    upstream.add_scenario(fast, Scenario(tokens=["a", "b"], usage=(3, 2)))
    upstream.add_scenario(slow, Scenario(tokens=["s "] * 1000, delay=0.05))
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k",
           **shared_redis.env, "AXRISI_RATE_LIMIT": "5/minute;100/day",
           "AXRISI_MAX_STREAMS_PER_USER": "2", "AXRISI_TOKEN_QUOTA": "100/day"}
    user = f"usage-{uuid.uuid4().hex[:8]}"
    with Gunicorn(env) as first, Gunicorn(env) as second:
        fresh = usage(first, user)
        assert fresh == {
            "rate": [{"limit": "5 per 1 minute", "remaining": 5, "resetSeconds": 0},
                     {"limit": "100 per 1 day", "remaining": 100, "resetSeconds": 0}],
            "streams": {"open": 0, "max": 2},
            "tokens": {"used": 0, "quota": 100, "resetSeconds": 0}}
        for server in (first, second):  # 5 tokens each, charged when they end
            assert post_run(server.url, run_body(fast), user).status_code == 200
        conn = SSEConnection(first.url, run_body(slow), token=make_token(user))
        conn.read_until(lambda e: "content" in e.json)
        for _ in range(3):  # usage itself counts against nothing
            seen = usage(second, user)
        minute, day = seen["rate"]
        assert minute["remaining"] == 2 and 1 <= minute["resetSeconds"] <= 60
        assert day["remaining"] == 97 and 1 <= day["resetSeconds"] <= 86400
        assert seen["streams"] == {"open": 1, "max": 2}
        assert seen["tokens"]["used"] == 10 and seen["tokens"]["quota"] == 100
        assert 1 <= seen["tokens"]["resetSeconds"] <= 86400
        # The figures are the ones the 429s enforce: 2 requests left this minute.
        assert [post_run(second.url, run_body(fast), user).status_code
                for _ in range(2)] == [200, 200]
        time.sleep(0.2)
        spent = usage(first, user)
        assert spent["rate"][0]["remaining"] == 0
        assert spent["tokens"]["used"] == 20
        refused = post_run(first.url, run_body(fast), user)
        conn.drop()
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
        assert abs(int(refused.headers["Retry-After"]) - spent["rate"][0]["resetSeconds"]) <= 1


def test_usage_without_limits_or_redis(upstream: FakeUpstream) -> None:
    """No stream limit, no token quota, one worker: nulls where nothing is enforced."""
    key = unique_key("usage-local")
    upstream.add_scenario(key, Scenario(tokens=["x"], usage=(4, 1)))
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k",
           "AXRISI_RATE_LIMIT": "30/minute", "AXRISI_MAX_STREAMS_PER_USER": "0"}
    user = f"usage-{uuid.uuid4().hex[:8]}"
    with Gunicorn(env) as server:
        assert post_run(server.url, run_body(key), user).status_code == 200
        time.sleep(0.2)
        seen = usage(server, user)
        unauthenticated = requests.get(server.url + "/api/usage", timeout=5)
    assert seen["streams"] == {"open": 0, "max": None}
    assert seen["tokens"] == {"used": 5, "quota": None, "resetSeconds": None}
    assert seen["rate"][0]["remaining"] == 29
    assert unauthenticated.status_code == 401
