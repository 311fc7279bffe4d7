"""A blocked address's request is refused before Flask (``blockgate.py``): the contract's 429,
counted, held on a closing connection within a bound, with the headers Flask's path would add."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterable
from typing import Any

import pytest
from flask import request
from prometheus_client import REGISTRY
from werkzeug.test import EnvironBuilder

from axrisi import create_app
from axrisi.config import Settings
from axrisi.web.blockgate import MAX_HELD, BlockGate, CorsHeaders
from axrisi.web.loginguard import LoginGuard

SECRET = "unit-test-secret-0123456789-0123456789"
BLOCKED = "198.51.100.66"


def never_called(environ: Any, start_response: Any) -> Iterable[bytes]:
    raise AssertionError("the request reached Flask")


def passed(environ: Any, start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"passed"]


def blocked_guard(address: str = BLOCKED, seconds: float = 30.0) -> LoginGuard:
    """A guard that remembers ``address`` as past the limit for ``seconds``."""
    guard = LoginGuard("1/minute", None)
    guard.blocked[address] = time.monotonic() + seconds
    return guard


class Answer:
    """What a WSGI app gave: status, headers and body; and whether it asked for a close."""

    def __init__(self) -> None:
        self.status = ""
        self.headers: dict[str, str] = {}
        self.closed = False

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Any:
        self.status = status
        self.headers = dict(headers)
        return lambda data: None

    def force_close(self) -> None:
        """What gunicorn's Response offers (``start_response.__self__``)."""
        self.closed = True


def call(gate: BlockGate, path: str = "/api/run", method: str = "POST",
         address: str = BLOCKED, headers: dict[str, str] | None = None,
         body: bytes = b'{"command": "summarize"}') -> tuple[Answer, bytes, io.BytesIO]:
    environ = EnvironBuilder(path=path, method=method, headers=headers, data=body,
                             environ_base={"REMOTE_ADDR": address}).get_environ()
    stream = io.BytesIO(body)
    environ["wsgi.input"] = stream
    answer = Answer()
    data = b"".join(gate(environ, answer.start_response))
    return answer, data, stream


def counter(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_a_blocked_address_gets_the_contracts_429_without_reaching_flask() -> None:
    """Body, Retry-After in whole seconds, the client's sane X-Request-ID, a closed connection."""
    gate = BlockGate(never_called, blocked_guard(seconds=29.2))
    answer, data, _ = call(gate, headers={"X-Request-ID": "trace-42"})
    assert answer.status.startswith("429")
    assert json.loads(data) == {"error": json.loads(data)["error"], "code": "rate_limited"}
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Retry-After"] == "30"
    assert answer.headers["X-Request-ID"] == "trace-42"
    assert answer.closed


def test_an_insane_request_id_is_replaced() -> None:
    """A client's X-Request-ID with spaces or too long is not echoed: a new id is made."""
    gate = BlockGate(never_called, blocked_guard())
    for given in ("two words", "x" * 200):
        answer, _, _ = call(gate, headers={"X-Request-ID": given})
        made = answer.headers["X-Request-ID"]
        assert made != given and len(made) == 32


def test_the_refusal_is_counted_as_the_flask_path_counts_it() -> None:
    """axrisi_auth_refusals_total, rejections{rate_limited} and streams{limited} each go up."""
    gate = BlockGate(never_called, blocked_guard())
    before = (counter("axrisi_auth_refusals_total"),
              counter("axrisi_rejections_total", {"code": "rate_limited"}),
              counter("axrisi_streams_total", {"outcome": "limited"}))
    call(gate)
    after = (counter("axrisi_auth_refusals_total"),
             counter("axrisi_rejections_total", {"code": "rate_limited"}),
             counter("axrisi_streams_total", {"outcome": "limited"}))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]


@pytest.mark.parametrize(("path", "method", "address"), [
    pytest.param("/api/run", "POST", "203.0.113.9", id="another-address"),
    pytest.param("/api/run", "OPTIONS", BLOCKED, id="preflight"),
    pytest.param("/healthz", "GET", BLOCKED, id="not-api"),
    pytest.param("/metrics", "GET", BLOCKED, id="metrics"),
])
def test_what_the_guard_does_not_refuse_goes_on_to_the_app(path: str, method: str,
                                                          address: str) -> None:
    """Only a blocked address's /api/ requests are answered here; preflights never are."""
    gate = BlockGate(passed, blocked_guard())
    answer, data, _ = call(gate, path=path, method=method, address=address)
    assert answer.status == "200 OK" and data == b"passed" and not answer.closed


def test_an_ipv6_client_is_refused_by_its_64() -> None:
    """The gate asks the guard with the address; the guard counts an IPv6 one by its /64."""
    gate = BlockGate(never_called, blocked_guard("2001:db8:1:2::/64"))
    answer, _, _ = call(gate, address="2001:db8:1:2::99")
    assert answer.status.startswith("429")


def test_a_block_that_ran_out_lets_the_address_through() -> None:
    """Past its end the address is forgotten and its request goes on to the app."""
    gate = BlockGate(passed, blocked_guard(seconds=-0.1))
    answer, _, _ = call(gate)
    assert answer.status == "200 OK"


def test_the_refusal_is_held_for_at_most_a_second_and_never_past_the_block() -> None:
    """Held 0.5-1 s (spread, so that a flood's held refusals do not wake together), never past
    what is left of the block; Retry-After counts from the end of the hold; the body is read."""
    slept: list[float] = []
    gate = BlockGate(never_called, blocked_guard(seconds=30.5), sleep=slept.append)
    answer, _, stream = call(gate)
    assert len(slept) == 1 and 0.5 <= slept[0] <= 1.0
    assert answer.headers["Retry-After"] == "30"  # 29.5-30 s left after the hold, rounded up
    assert stream.tell() == len(b'{"command": "summarize"}'), "the body was not read"
    short = BlockGate(never_called, blocked_guard(seconds=0.4), sleep=slept.append)
    call(short)
    assert 0 < slept[-1] <= 0.4
    assert gate.held == short.held == 0


def test_past_the_bound_a_refusal_is_answered_at_once_and_closed() -> None:
    """With MAX_HELD refusals held, the next is not held (no sleep) and still closes."""
    slept: list[float] = []
    gate = BlockGate(never_called, blocked_guard(), sleep=slept.append)
    gate.held = MAX_HELD
    answer, _, _ = call(gate)
    assert slept == [] and answer.closed and answer.status.startswith("429")
    assert gate.held == MAX_HELD


def test_without_gevent_nothing_is_held() -> None:
    """Outside gevent's worker (no patched sockets here) a sleep would block a thread: none."""
    gate = BlockGate(never_called, blocked_guard())
    assert gate._cooperative_sleep() is None
    answer, _, _ = call(gate)
    assert answer.headers["Retry-After"] == "30"


@pytest.mark.parametrize(("headers", "body"), [
    pytest.param({"Expect": "100-continue"}, b"x" * 10, id="expect-continue"),
    pytest.param({}, b"x" * (64 * 1024 + 1), id="too-big"),
])
def test_a_body_not_sent_yet_or_too_big_is_not_read(headers: dict[str, str], body: bytes
                                                    ) -> None:
    """The drain reads only a small body the client has sent anyway."""
    gate = BlockGate(never_called, blocked_guard())
    _, _, stream = call(gate, headers=headers, body=body)
    assert stream.tell() == 0


ORIGINS = [
    pytest.param(("https://a.test",), id="one-origin"),
    pytest.param(("https://a.test", "https://b.test"), id="two-origins"),
    pytest.param(("*",), id="wildcard"),
    pytest.param(("https://*.example.com",), id="regex-characters"),
]
REQUEST_ORIGINS = ["https://a.test", "https://B.test", "https://x.example.com",
                   "https://*.example.com", "https://evil.test", None]


def cors_part(headers: Any) -> dict[str, str]:
    return {k: v for k, v in dict(headers).items() if k.startswith("Access-Control") or k == "Vary"}


@pytest.mark.parametrize("origins", ORIGINS)
def test_cors_headers_are_the_ones_flask_cors_adds(origins: tuple[str, ...]) -> None:
    """For every request origin, the gate's Access-Control and Vary headers are those that
    flask-cors (cors.py) puts on an /api/ error answer: the two option sets cannot drift."""
    settings = Settings(jwt_secret_key=SECRET, cors_origins=origins)
    app = create_app(settings)
    flask = app.test_client()
    gate = BlockGate(never_called, blocked_guard(), CorsHeaders(app, settings))
    for origin in REQUEST_ORIGINS:
        headers = {"Authorization": "Bearer bad"} | ({"Origin": origin} if origin else {})
        through_flask = flask.post("/api/run", headers=headers,
                                   environ_base={"REMOTE_ADDR": "203.0.113.1"})
        assert through_flask.status_code == 401
        answer, _, _ = call(gate, headers=headers)
        assert cors_part(answer.headers) == cors_part(through_flask.headers), origin


def test_no_cors_origins_means_no_cors_headers_here_either() -> None:
    """Without CORS_ORIGINS the gate has no CORS part at all."""
    settings = Settings(jwt_secret_key=SECRET)
    assert CorsHeaders.for_app(create_app(settings), settings) is None


def test_the_app_refuses_a_blocked_address_at_the_gate() -> None:
    """Through the whole app (Flask's test client): the failures' 429 from Flask, then the
    gate's identical 429; another address is unaffected, and /healthz still answers."""
    app = create_app(Settings(jwt_secret_key=SECRET, auth_failure_limit="2/minute"))
    reached_flask: list[str] = []
    app.before_request(lambda: reached_flask.append(request.path))
    c = app.test_client()
    bad = {"Authorization": "Bearer bad"}
    statuses = [c.get("/api/commands", headers=bad).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    again = c.get("/api/commands", headers=bad | {"X-Request-ID": "r-1"})
    assert again.status_code == 429 and again.json is not None
    assert again.json["code"] == "rate_limited" and again.headers["X-Request-ID"] == "r-1"
    assert int(again.headers["Retry-After"]) >= 1
    assert len(reached_flask) == 3, "the blocked address's request reached Flask"
    assert c.get("/healthz").status_code == 200
    other = c.get("/api/commands", headers=bad, environ_base={"REMOTE_ADDR": "203.0.113.2"})
    assert other.status_code == 401


def test_every_api_route_authenticates() -> None:
    """The gate refuses a blocked address's whole /api/ prefix because every route there checks
    a token: an /api/ route added without one fails here (it would be refused by the gate)."""
    app = create_app(Settings(jwt_secret_key=SECRET))
    c = app.test_client()
    routes = [rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")]
    assert routes
    for rule in routes:
        path = re.sub(r"<[^>]+>", "x", rule.rule)
        for method in sorted((rule.methods or set()) - {"OPTIONS", "HEAD"}):
            assert c.open(path, method=method).status_code == 401, (method, path)
