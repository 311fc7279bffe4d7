"""Operations: metrics, the request log, graceful shutdown and load shedding, end to end."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
import uuid

import requests

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, auth, content_of, make_token
from .conftest import UPSTREAM_KEY
from .redis_server import RedisServer
from .servers import Gunicorn
from .test_stream import run_body, unique_key


def env_for(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": UPSTREAM_KEY,
            "AXRISI_HEARTBEAT_SECONDS": "0.5", "AXRISI_RATE_LIMIT": "100000/minute", **extra}


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.M)
    return float(match.group(1)) if match else 0.0


def scrape(server: Gunicorn, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(server.url + "/metrics", headers=headers, timeout=5)
    assert response.status_code == 200
    return response.text


def wait_metric(server: Gunicorn, name: str, labels: str, value: float) -> str:
    deadline = time.monotonic() + 5
    while True:
        text = scrape(server)
        if metric(text, name, labels) == value or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_metrics_follow_streams_across_two_workers(upstream: FakeUpstream,
                                                   redis_server: RedisServer) -> None:
    """Open streams go up and down, outcomes and 429s are counted, over two workers."""
    env = env_for(upstream, REDIS_URL=redis_server.url, AXRISI_MAX_STREAMS_PER_USER="2")
    slow, fast = unique_key("m-slow"), unique_key("m-fast")
    upstream.add_scenario(slow, Scenario(tokens=["s "] * 1000, delay=0.05))
    upstream.add_scenario(fast, Scenario(tokens=["a", "b"], usage=(3, 2)))
    user = f"metrics-{uuid.uuid4().hex[:6]}"
    with Gunicorn(env, workers=2) as server:
        before = scrape(server)
        assert metric(before, "axrisi_open_streams") == 0
        conns = [SSEConnection(server.url, run_body(slow), token=make_token(user))
                 for _ in range(2)]
        for conn in conns:
            conn.read_until(lambda e: "content" in e.json)
        text = wait_metric(server, "axrisi_open_streams", "", 2)
        assert metric(text, "axrisi_open_streams") == 2
        assert metric(text, "axrisi_open_stream_slots") == 2
        refused = requests.post(server.url + "/api/run", json=run_body(fast), timeout=5,
                                headers={"Authorization": f"Bearer {make_token(user)}"})
        assert refused.status_code == 429
        for conn in conns:
            conn.drop()
        text = wait_metric(server, "axrisi_open_streams", "", 0)
        assert metric(text, "axrisi_open_streams") == 0
        assert metric(text, "axrisi_open_stream_slots") == 0
        assert metric(text, "axrisi_streams_total", 'outcome="client_gone"') == 2
        assert metric(text, "axrisi_cancellations_total") == 2
        assert metric(text, "axrisi_cancellation_seconds_count") == 2
        assert metric(text, "axrisi_rejections_total", 'code="too_many_streams"') == 1
        assert metric(text, "axrisi_streams_total", 'outcome="limited"') == 1
        SSEConnection(server.url, run_body(fast), token=make_token(user)).read_all()
        text = wait_metric(server, "axrisi_streams_total", 'outcome="done"', 1)
        assert metric(text, "axrisi_streams_total", 'outcome="done"') == 1
        assert metric(text, "axrisi_tokens_relayed_total") >= 2
        assert metric(text, "axrisi_time_to_first_token_seconds_count") >= 1
        assert metric(text, "axrisi_stream_duration_seconds_count") == 3
        assert metric(text, "axrisi_redis_up") == 1


def greenlets(server: Gunicorn) -> float:
    """The worker's live greenlets (one worker: one ``pid`` sample)."""
    samples = re.findall(r'^axrisi_greenlets\{pid="\d+"\} (\S+)$', scrape(server), re.M)
    assert len(samples) == 1
    return float(samples[0])


def test_no_greenlet_count_without_the_setting(upstream: FakeUpstream) -> None:
    """By default a scrape walks no heap, and shows no greenlet gauge (not a misleading 0)."""
    with Gunicorn(env_for(upstream)) as server:
        text = scrape(server)
    assert "axrisi_open_streams" in text and "axrisi_greenlets" not in text


def test_greenlets_gauge_counts_streams_and_returns_after_drops(upstream: FakeUpstream) -> None:
    """Each open stream shows in the worker's greenlet count, and dropped ones leave none."""
    slow = unique_key("m-green")
    upstream.add_scenario(slow, Scenario(tokens=["g "] * 1000, delay=0.05))
    with Gunicorn(env_for(upstream, AXRISI_GREENLET_GAUGE="1")) as server:
        idle = greenlets(server)
        conns = [SSEConnection(server.url, run_body(slow)) for _ in range(5)]
        for conn in conns:
            conn.read_until(lambda e: "content" in e.json)
        assert greenlets(server) >= idle + 5
        for conn in conns:
            conn.drop()
        deadline = time.monotonic() + 5
        while greenlets(server) > idle and time.monotonic() < deadline:
            time.sleep(0.05)
        assert greenlets(server) == idle


def test_upstream_errors_are_counted_by_kind(upstream: FakeUpstream) -> None:
    """An upstream 503 counts as upstream error kind status_5xx and outcome upstream_error."""
    key = unique_key("m-err")
    upstream.add_scenario(key, Scenario(status=503))
    with Gunicorn(env_for(upstream)) as server:
        SSEConnection(server.url, run_body(key)).read_all()
        text = wait_metric(server, "axrisi_streams_total", 'outcome="upstream_error"', 1)
    assert metric(text, "axrisi_upstream_errors_total", 'kind="status_5xx"') == 1
    assert metric(text, "axrisi_streams_total", 'outcome="upstream_error"') == 1


def test_metrics_token(upstream: FakeUpstream) -> None:
    """With AXRISI_METRICS_TOKEN, /metrics wants it as a bearer token."""
    with Gunicorn(env_for(upstream, AXRISI_METRICS_TOKEN="metrics-secret-123")) as server:
        assert requests.get(server.url + "/metrics", timeout=5).status_code == 401
        wrong = requests.get(server.url + "/metrics", timeout=5,
                             headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert "axrisi_open_streams" in scrape(server, "metrics-secret-123")


def test_log_line_has_the_fields_and_no_user_text(upstream: FakeUpstream) -> None:
    """One JSON line per request with id, user hash, command, outcome, times, tokens; no text."""
    key = unique_key("log")
    secret_text = f"ZEBRA-PRIVATE-TEXT-{uuid.uuid4().hex}"
    output = f"OUTPUT-MARKER-{uuid.uuid4().hex}"
    upstream.add_scenario(key, Scenario(tokens=[output, " end"], usage=(7, 2)))
    token = make_token("log-user@example.com")
    with Gunicorn(env_for(upstream)) as server:
        conn = SSEConnection(server.url, {"command": "summarize", "text": f"{key} {secret_text}"},
                             token=token, headers={"X-Request-ID": "req-abc.123"})
        assert content_of(conn.read_all()) == f"{output} end"
        assert conn.headers["X-Request-ID"] == "req-abc.123"
        bad = requests.get(server.url + "/healthz", timeout=5,
                           headers={"X-Request-ID": "bad id <with> spaces;" * 20})
        assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["X-Request-ID"])
        deadline = time.monotonic() + 5
        while "req-abc.123" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    line = next(entry for entry in lines if entry.get("requestId") == "req-abc.123")
    assert line["path"] == "/api/run" and line["status"] == 200
    assert line["command"] == "summarize" and line["outcome"] == "done"
    assert line["tokens"] >= 1 and line["durationMs"] >= line["ttftMs"] >= 0
    assert re.fullmatch(r"[0-9a-f]{16}", line["user"])
    for forbidden in (secret_text, output, token, UPSTREAM_KEY, "log-user@example.com"):
        assert forbidden not in log


def test_sigterm_ends_a_slow_stream_with_shutting_down(upstream: FakeUpstream) -> None:
    """SIGTERM: a stream that outlives the graceful timeout ends shutting_down, upstream closed,
    new streams and /readyz get 503 while /healthz stays 200, and gunicorn exits in time."""
    key, short = unique_key("term-slow"), unique_key("term-short")
    upstream.add_scenario(key, Scenario(tokens=["t "] * 1000, delay=0.1))
    upstream.add_scenario(short, Scenario(tokens=["quick ", "one"], first_token_delay=1.0))
    env = env_for(upstream, GUNICORN_CMD_ARGS="--graceful-timeout 5")
    server = Gunicorn(env).start()
    try:
        assert server.proc is not None
        slow = SSEConnection(server.url, run_body(key))
        slow.read_until(lambda e: "content" in e.json)
        quick = SSEConnection(server.url, run_body(short))
        idle = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
                for _ in range(3)]
        for conn in idle:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
        record = upstream.wait_for_request(key)
        term_at = time.monotonic()
        os.killpg(server.proc.pid, signal.SIGTERM)
        time.sleep(0.6)
        idle[0].request("GET", "/readyz")
        assert idle[0].getresponse().status == 503
        idle[1].request("GET", "/healthz")
        assert idle[1].getresponse().status == 200
        idle[2].request("POST", "/api/run", body=json.dumps(run_body(key)),
                        headers={**auth(), "Content-Type": "application/json"})
        refused = idle[2].getresponse()
        assert refused.status == 503 and refused.getheader("Retry-After")
        assert json.loads(refused.read())["code"] == "unavailable"
        assert content_of(quick.read_all()) == "quick one"
        events = slow.read_all()
        assert events[-1].event == "error" and events[-1].json["code"] == "shutting_down"
        assert record.wait_closed(3)
        assert server.proc.wait(15) == 0
        assert time.monotonic() - term_at < 12
    finally:
        server.stop()


def test_load_shedding_past_max_streams(upstream: FakeUpstream) -> None:
    """Past AXRISI_MAX_STREAMS streams in a worker, 503 unavailable with Retry-After at once."""
    key = unique_key("shed")
    upstream.add_scenario(key, Scenario(tokens=["x "] * 1000, delay=0.05))
    fast = unique_key("shed-fast")
    upstream.add_scenario(fast, Scenario(tokens=["ok"]))
    env = env_for(upstream, AXRISI_MAX_STREAMS="2", AXRISI_MAX_STREAMS_PER_USER="0")
    with Gunicorn(env) as server:
        conns = [SSEConnection(server.url, run_body(key), token=make_token(f"u{i}"))
                 for i in range(2)]
        for conn in conns:
            conn.read_until(lambda e: "content" in e.json)
        shed = requests.post(server.url + "/api/run", json=run_body(fast), headers=auth(),
                             timeout=5)
        assert shed.status_code == 503 and shed.json()["code"] == "unavailable"
        assert int(shed.headers["Retry-After"]) >= 1
        conns[0].drop()
        deadline = time.monotonic() + 3
        while True:
            again = requests.post(server.url + "/api/run", json=run_body(fast), headers=auth(),
                                  timeout=5)
            if again.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert again.status_code == 200
        conns[1].drop()
