"""Failed logins are limited per client address: a flood of bad tokens cannot starve good users,
and it is logged in aggregate, not one line per refused request."""

from __future__ import annotations

import threading
import time
import uuid

import requests

from tests.fake_upstream import FakeUpstream, Scenario

from .client import make_token
from .servers import Gunicorn
from .test_stream import run_body, unique_key


def post(server: Gunicorn, key: str, token: str, forwarded_for: str | None = None
         ) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    return requests.post(server.url + "/api/run", json=run_body(key), headers=headers,
                         timeout=10)


def test_an_address_past_the_limit_gets_429_even_with_a_good_token(
        upstream: FakeUpstream) -> None:
    key = unique_key("guard")
    upstream.add_scenario(key, Scenario(tokens=["ok"]))
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k",
           "AXRISI_AUTH_FAILURE_LIMIT": "5/minute", "AXRISI_RATE_LIMIT": "1000/minute"}
    with Gunicorn(env) as server:
        bad = [post(server, key, "not-a-token").status_code for _ in range(5)]
        refused = post(server, key, "still-not-a-token")
        good_after = post(server, key, make_token("alice"))
    assert bad == [401] * 5
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # The address is refused before any token is decoded, a good one included.
    assert good_after.status_code == 429


def test_x_forwarded_for_is_believed_only_for_trusted_proxies(upstream: FakeUpstream) -> None:
    key = unique_key("guard-xff")
    upstream.add_scenario(key, Scenario(tokens=["ok"]))
    base = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k",
            "AXRISI_AUTH_FAILURE_LIMIT": "3/minute", "AXRISI_RATE_LIMIT": "1000/minute"}
    with Gunicorn({**base, "AXRISI_TRUSTED_PROXIES": "1"}) as server:
        for _ in range(4):
            post(server, key, "bad", forwarded_for="198.51.100.7")
        assert post(server, key, "bad", forwarded_for="198.51.100.7").status_code == 429
        # Another client behind the same proxy is not affected.
        assert post(server, key, make_token("bob"), forwarded_for="203.0.113.9"
                    ).status_code == 200
    with Gunicorn({**base, "AXRISI_TRUSTED_PROXIES": "0"}) as server:  # a forged header
        # changes nothing when no proxy is trusted
        for n in range(4):  # four failures, each "from" another address: one address to us
            post(server, key, "bad", forwarded_for=f"192.0.2.{n}")
        assert post(server, key, make_token("bob"), forwarded_for="203.0.113.9"
                    ).status_code == 429


def test_a_flood_of_bad_tokens_does_not_starve_good_users(upstream: FakeUpstream) -> None:
    """One address floods bad tokens (bounded: 4 threads x 6 s) while another user streams:
    every good request streams, and the refusals are logged in a handful of lines."""
    key = unique_key("flood")
    upstream.add_scenario(key, Scenario(tokens=["fine"]))
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k",
           "AXRISI_TRUSTED_PROXIES": "1", "AXRISI_AUTH_FAILURE_LIMIT": "60/minute",
           "AXRISI_RATE_LIMIT": "1000/minute", "AXRISI_MAX_STREAMS_PER_USER": "0"}
    stop = time.monotonic() + 6
    refused = [0]

    def flood() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                answer = session.post(server.url + "/api/run", json=run_body(key), timeout=10,
                                      headers={"Authorization": "Bearer junk",
                                               "X-Forwarded-For": "198.51.100.66"})
                refused[0] += answer.status_code == 429

    with Gunicorn(env) as server:
        threads = [threading.Thread(target=flood) for _ in range(4)]
        for thread in threads:
            thread.start()
        user = f"good-{uuid.uuid4().hex[:6]}"
        good = []
        while time.monotonic() < stop - 0.5:
            good.append(post(server, key, make_token(user), forwarded_for="203.0.113.5"))
            time.sleep(0.1)
        for thread in threads:
            thread.join(20)
        log = server.log()
    assert refused[0] > 100, "the flood was not refused"
    failed = [answer.status_code for answer in good if answer.status_code != 200
              or "fine" not in answer.text]
    assert len(good) >= 20 and not failed
    access_lines = sum(1 for line in log.splitlines() if '"status":429' in line)
    assert access_lines == 0, "one access line per refused request"
    assert log.count("after too many failed logins") <= 2
