"""Failed logins are limited per client address: a flood of bad tokens cannot starve good users,
and it is logged in aggregate, not one line per refused request. Once an address is past the limit
its requests are refused before Flask (``blockgate.py``), each held a moment on a connection that
then closes."""

from __future__ import annotations

import json
import re
import socket
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
    every good request streams, the flood gets exactly the limit's 401s and then only 429s (held
    by the gate, so a few a second per connection), and the refusals are logged in a handful of
    lines."""
    key = unique_key("flood")
    upstream.add_scenario(key, Scenario(tokens=["fine"]))
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k",
           "AXRISI_TRUSTED_PROXIES": "1", "AXRISI_AUTH_FAILURE_LIMIT": "60/minute",
           "AXRISI_RATE_LIMIT": "1000/minute", "AXRISI_MAX_STREAMS_PER_USER": "0"}
    stop = time.monotonic() + 6
    statuses: list[int] = []

    def flood() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                answer = session.post(server.url + "/api/run", json=run_body(key), timeout=10,
                                      headers={"Authorization": "Bearer junk",
                                               "X-Forwarded-For": "198.51.100.66"})
                statuses.append(answer.status_code)

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
    assert statuses.count(401) == 60 and statuses.count(429) > 0, "the flood was not refused"
    assert set(statuses) == {401, 429}
    failed = [answer.status_code for answer in good if answer.status_code != 200
              or "fine" not in answer.text]
    assert len(good) >= 20 and not failed
    access_lines = sum(1 for line in log.splitlines() if '"status":429' in line)
    assert access_lines == 0, "one access line per refused request"
    assert log.count("after too many failed logins") <= 2


BLOCKED = "203.0.113.7"


def refusals(server: Gunicorn) -> float:
    """``axrisi_auth_refusals_total`` as /metrics reports it (summed over the workers)."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    found = re.search(r"^axrisi_auth_refusals_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def raw_post(server: Gunicorn, key: str, request_id: str) -> socket.socket:
    """A bad-token POST /api/run from the blocked address on a keep-alive connection of its own,
    sent but not read (so that its answer can be awaited later)."""
    body = json.dumps(run_body(key)).encode()
    head = (f"POST /api/run HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Connection: keep-alive\r\nAuthorization: Bearer junk\r\n"
            f"X-Forwarded-For: {BLOCKED}\r\nX-Request-ID: {request_id}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(head.encode() + body)
    return sock


def read_answer(sock: socket.socket, until_closed: bool
                ) -> tuple[int, dict[str, str], bytes, bool]:
    """One HTTP answer: status, headers (lower-case names), body; and whether the server then
    closed the connection (read to EOF, the socket's timeout the deadline), when asked."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the body"
        rest += chunk
    closed = False
    if until_closed:
        closed = sock.recv(65536) == b""  # blocks until EOF; the socket's timeout fails it
    return int(lines[0].split()[1]), headers, rest[:length], closed


def test_a_blocked_address_is_refused_before_flask_on_a_closing_connection(
        upstream: FakeUpstream) -> None:
    """Past the limit, the refusal that blocks the address comes from Flask (its connection kept);
    every later request of that address gets the contract's 429 from the gate (body, Retry-After,
    its own X-Request-ID), counted in /metrics, and its connection closed, while a good user
    from another address streams during that refusal's hold."""
    key = unique_key("gate")
    upstream.add_scenario(key, Scenario(tokens=["fine"]))
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k",
           "AXRISI_AUTH_FAILURE_LIMIT": "3/minute", "AXRISI_RATE_LIMIT": "1000/minute"}
    with Gunicorn(env) as server:  # the default AXRISI_TRUSTED_PROXIES=private: loopback
        # proxies are believed, so X-Forwarded-For names the client
        assert [post(server, key, "bad", forwarded_for=BLOCKED).status_code
                for _ in range(3)] == [401] * 3
        with raw_post(server, key, "blocking-1") as sock:
            status, headers, _body, _ = read_answer(sock, until_closed=False)
        assert status == 429 and headers["connection"] == "keep-alive"  # Flask's refusal
        counted = refusals(server)
        assert counted == 1

        with raw_post(server, key, "refused-2") as sock:
            # Counted before it is held: once /metrics shows it, the gate holds it now.
            deadline = time.monotonic() + 10
            while refusals(server) < counted + 1:
                assert time.monotonic() < deadline, "the refusal was never counted"
                time.sleep(0.02)
            good = post(server, key, make_token("carol"), forwarded_for="198.51.100.20")
            status, headers, body, closed = read_answer(sock, until_closed=True)
        assert good.status_code == 200 and "fine" in good.text
        assert status == 429
        assert json.loads(body) == {"error": json.loads(body)["error"], "code": "rate_limited"}
        assert json.loads(body)["error"]
        assert headers["content-type"] == "application/json"
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["x-request-id"] == "refused-2"
        assert headers["connection"] == "close" and closed
        assert refusals(server) == counted + 1
        # A request id that is not sane is replaced, as on every other answer.
        with raw_post(server, key, "not@sane id") as sock:
            sock.settimeout(10)
            _status, headers, _body, _ = read_answer(sock, until_closed=False)
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
