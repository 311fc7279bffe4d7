"""The shipped nginx site (deploy/nginx/axrisi.conf) in front of the real gunicorn, on loopback.

Debian's nginx runs the site file as shipped, changed in two places only: its ``listen 80;``
becomes a free loopback port and its ``server 127.0.0.1:8000`` becomes the test gunicorn's
port. Everything nginx writes goes to a temporary directory. The tests check that tokens pass
through one at a time and are not buffered into one lump. They also check heartbeats, client
hang-ups, request ids, both body limits, keep-alive to gunicorn, nginx's answer while
gunicorn is down, and that the default AXRISI_TRUSTED_PROXIES tells nginx's clients apart.

Where nginx is missing the tests skip, except under ``CI=true`` where they fail: CI installs
``nginx-light``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, auth, content_of, make_token
from .procnet import children
from .servers import ROOT, Gunicorn, free_port, require_binary

SITE = ROOT / "deploy" / "nginx" / "axrisi.conf"
SITE_LISTEN = "listen 80;"
SITE_UPSTREAM = "server 127.0.0.1:8000"

TOKENS = [f"token{i} " for i in range(10)]
TOKEN_DELAY = 0.3


def nginx_binary() -> str:
    """Debian's nginx; a skip on a laptop without it, a failure under CI=true."""
    # /usr/sbin is not on every user's PATH.
    return require_binary("nginx", "/usr/sbin/nginx", package="nginx-light")


class Nginx:
    """``nginx`` in the foreground with the shipped site, its files all in a temporary dir."""

    def __init__(self, binary: str, upstream_port: int) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="axrisi-nginx-"))
        # Run as root, nginx's workers drop to an unprivileged user who must be able to
        # reach the temp paths under this directory.
        self.dir.chmod(0o755)
        self.proc: subprocess.Popen[bytes] | None = None
        site = SITE.read_text()
        for literal in (SITE_LISTEN, SITE_UPSTREAM):
            assert site.count(literal) == 1, f"{SITE} must hold {literal!r} exactly once"
        site = site.replace(SITE_LISTEN, f"listen 127.0.0.1:{self.port};")
        site = site.replace(SITE_UPSTREAM, f"server 127.0.0.1:{upstream_port}")
        (self.dir / "axrisi.conf").write_text(site)
        d = self.dir
        (d / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # As in Debian's /etc/nginx/nginx.conf, so that the site's own gzip setting is what counts.
    gzip on;
    include {d}/axrisi.conf;
}}
""")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        # -e: the error log from the very start, before nginx has read its configuration.
        command = [self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                   "-e", str(self.dir / "error.log")]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=10)
        assert check.returncode == 0, f"nginx -t refused the site:\n{check.stderr}"
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.log()}")
            try:
                requests.get(self.url + "/healthz", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        log = self.log()
        self.stop()
        raise RuntimeError(f"nginx did not start:\n{log}")

    def log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def nginx(request: pytest.FixtureRequest) -> Iterator[Nginx]:
    binary = nginx_binary()  # Before gunicorn starts, so a skip costs nothing.
    server: Gunicorn = request.getfixturevalue("server")
    proxy = Nginx(binary, server.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def run_body(key: str) -> dict[str, str]:
    return {"command": "summarize", "text": f"Some page text {key}."}


def unique_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_tokens_pass_through_one_by_one(nginx: Nginx, upstream: FakeUpstream) -> None:
    """Each token is its own event and reaches the client while the model is still writing.

    The check uses the order of events, not a timing threshold. When content event k reaches
    the client, we read how many tokens the fake upstream has written. A proxy that buffers
    the response would hand over nothing before the upstream had written all ten tokens, so
    every count would be 10. Here the first count must be under 10, and so must the counts for
    the whole first half of the answer. The tokens are 0.3 s apart.
    """
    key = unique_key("nginx-stream")
    upstream.add_scenario(key, Scenario(tokens=TOKENS, delay=TOKEN_DELAY))
    # Accept-Encoding as a browser sends it: a stream must not be compressed all the same.
    headers = {"X-Request-ID": f"rid-{key}", "Accept-Encoding": "gzip, deflate, br"}
    conn = SSEConnection(nginx.url, run_body(key), headers=headers)
    assert conn.status == 200
    assert conn.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert conn.headers.get("Content-Length") is None
    assert conn.headers.get("Content-Encoding") is None
    assert conn.headers["Cache-Control"] == "no-cache"
    assert conn.headers["X-Accel-Buffering"] == "no"
    assert conn.headers["X-Request-ID"] == f"rid-{key}"
    record = upstream.wait_for_request(key)

    events, sent_when_seen = [], []
    for event in conn.events():
        events.append(event)
        if "content" in event.json:
            sent_when_seen.append(record.tokens_sent)

    contents = [e.json["content"] for e in events if "content" in e.json]
    assert contents == TOKENS, "every token arrives as its own event"
    assert content_of(events) == "".join(TOKENS)
    assert events[-1].json["done"] is True
    assert sent_when_seen[0] < len(TOKENS), "the first token waited for the whole answer"
    half = len(TOKENS) // 2
    assert all(n < len(TOKENS) for n in sent_when_seen[:half]), sent_when_seen
    assert sent_when_seen == sorted(sent_when_seen)
    assert record.wait_completed()


def test_heartbeats_pass_through(nginx: Nginx, upstream: FakeUpstream) -> None:
    """While the model is silent, the app's `: ping` comments reach the client through nginx."""
    key = unique_key("nginx-ping")
    upstream.add_scenario(key, Scenario(tokens=["late"], first_token_delay=1.5))
    conn = SSEConnection(nginx.url, run_body(key))
    events = conn.read_all()
    first_content = next(e for e in events if "content" in e.json)
    assert "ping" in first_content.comments, "a heartbeat came before the first token"
    assert content_of(events) == "late"


def test_client_hang_up_reaches_the_model(nginx: Nginx, upstream: FakeUpstream) -> None:
    """A client that closes its connection to nginx makes the app close the model request.

    The chain, end to end: nginx sees the client leave and closes its connection to gunicorn,
    the app sees that EOF and cancels the generation, and the model request is closed.
    """
    key = unique_key("nginx-drop")
    upstream.add_scenario(key, Scenario(tokens=[f"w{i} " for i in range(100)], delay=0.1))
    conn = SSEConnection(nginx.url, run_body(key))
    conn.read_until(lambda e: "content" in e.json)
    record = upstream.wait_for_request(key)
    conn.drop()
    assert record.wait_closed(5), "nginx must close the upstream connection when the client goes"
    assert record.tokens_sent < 100


def test_bodies_over_the_limits(nginx: Nginx, server: Gunicorn) -> None:
    """Both 413s, each answered by whoever should answer it, both as contract JSON.

    - 500 KB is over the app's limit (6 x 50,000 + 64 KiB, about 364 KB) but under nginx's
      ``client_max_body_size 1m``. nginx passes it on, and the app answers with its own 413
      that names its limit. The app logs the request id, which shows the request got there.
    - 5 MB is over nginx's 1 MB. nginx answers with its own 413 and gunicorn never sees the
      request (its log has no line with the id). The site's ``error_page 413 @too_large``
      makes that answer the same JSON shape, with the request id, instead of nginx's HTML page.
    """
    def post(size: int, request_id: str) -> requests.Response:
        body = json.dumps({"command": "summarize", "text": "x" * size})
        headers = {**auth(), "Content-Type": "application/json", "X-Request-ID": request_id}
        return requests.post(nginx.url + "/api/run", data=body, headers=headers, timeout=20)

    app_id, nginx_id = unique_key("app-413"), unique_key("nginx-413")

    by_app = post(500_000, app_id)
    assert by_app.status_code == 413
    assert by_app.headers["Content-Type"] == "application/json"
    assert by_app.json()["code"] == "too_large"
    assert "at most" in by_app.json()["error"], "the app's sentence, naming its limit"
    assert by_app.headers["X-Request-ID"] == app_id

    by_nginx = post(5_000_000, nginx_id)
    assert by_nginx.status_code == 413
    assert by_nginx.headers["Content-Type"] == "application/json"
    assert by_nginx.json() == {"error": "The request body is too large.", "code": "too_large"}
    assert by_nginx.headers["X-Request-ID"] == nginx_id

    deadline = time.monotonic() + 5
    while app_id not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app_id in server.log()
    assert nginx_id not in server.log()


def test_healthz_and_request_ids(nginx: Nginx) -> None:
    """/healthz answers through nginx, and every response carries an X-Request-ID.

    The client's own id is kept. Without one, nginx makes one up and the app keeps it.
    """
    response = requests.get(nginx.url + "/healthz", headers={"X-Request-ID": "probe-1"},
                            timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["X-Request-ID"] == "probe-1"
    made_up = requests.get(nginx.url + "/healthz", timeout=5).headers["X-Request-ID"]
    assert len(made_up) == 32 and int(made_up, 16) >= 0  # nginx's $request_id: 32 hex digits


def test_connections_to_gunicorn_are_reused(nginx: Nginx, server: Gunicorn) -> None:
    """Keep-alive to the upstream: requests reuse nginx's open connection to gunicorn.

    After a request, nginx's worker still holds an ESTABLISHED connection to gunicorn. More
    requests open no new one. With ``Connection: close`` or HTTP/1.0 to the upstream, every
    request would open, and then close, a connection of its own.
    """
    def upstream_connections() -> set[int]:
        """Local ports of nginx's worker's established connections to gunicorn."""
        assert nginx.proc is not None
        inodes = set()
        for pid in children(nginx.proc.pid):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        ports = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == server.port and fields[3] == "01" and fields[9] in inodes:
                ports.add(local_port)
        return ports

    assert requests.get(nginx.url + "/healthz", timeout=5).status_code == 200
    before = upstream_connections()
    assert before, "nginx closed its connection to gunicorn after the response"
    for _ in range(3):
        with requests.Session() as fresh_client:  # a new client connection every time
            assert fresh_client.get(nginx.url + "/healthz", timeout=5).status_code == 200
    assert upstream_connections() <= before, "a request opened a new upstream connection"


def test_gunicorn_down_is_the_contracts_503() -> None:
    """With gunicorn stopped (a restart, a crash), nginx answers 503 ``unavailable`` in JSON.

    A client then retries after ``Retry-After`` seconds. Without the site's error_page, it
    would get nginx's HTML 502 page.
    """
    proxy = Nginx(nginx_binary(), free_port()).start()  # nothing listens on that port
    try:
        response = requests.post(proxy.url + "/api/run", json=run_body("down"),
                                 headers={**auth(), "X-Request-ID": "down-1"}, timeout=5)
    finally:
        proxy.stop()
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Retry-After"] == "2"
    assert response.headers["X-Request-ID"] == "down-1"
    assert response.json()["code"] == "unavailable"


GOOD_CLIENT, ATTACKER = "127.0.0.2", "127.0.0.3"  # two clients of nginx on loopback


def post_from(source: str, proxy: Nginx, token: str, key: str) -> tuple[int, str]:
    """``POST /api/run`` through nginx from the local address ``source``; status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("POST", "/api/run", body=json.dumps(run_body(key)),
                     headers={"Authorization": f"Bearer {token}",
                              "Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


def test_one_clients_bad_tokens_never_block_another(upstream: FakeUpstream) -> None:
    """Behind the shipped site with the default AXRISI_TRUSTED_PROXIES, failed logins are counted
    per client, not for nginx's address: a client flooding bad tokens gets 429, and another
    client is still served. gunicorn's access log names each client, not nginx."""
    key = unique_key("nginx-guard")
    upstream.add_scenario(key, Scenario(tokens=["served"]))
    env = {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k",
           "AXRISI_AUTH_FAILURE_LIMIT": "5/minute", "AXRISI_RATE_LIMIT": "1000/minute",
           "AXRISI_MAX_STREAMS_PER_USER": "0", "GUNICORN_CMD_ARGS": "--access-logfile -"}
    good = make_token(f"good-{uuid.uuid4().hex[:6]}")
    with Gunicorn(env) as server:
        proxy = Nginx(nginx_binary(), server.port).start()
        try:
            before = post_from(GOOD_CLIENT, proxy, good, key)
            bad = [post_from(ATTACKER, proxy, "garbage", key)[0] for _ in range(8)]
            after = post_from(GOOD_CLIENT, proxy, good, key)
        finally:
            proxy.stop()
        log = server.log()
    assert before[0] == 200 and "served" in before[1]
    assert bad == [401] * 5 + [429] * 3
    assert after[0] == 200 and "served" in after[1]
    access = [line for line in log.splitlines() if '"POST /api/run' in line]
    assert sum(line.startswith(ATTACKER + " ") for line in access) == 8, access
    assert sum(line.startswith(GOOD_CLIENT + " ") for line in access) == 2, access
