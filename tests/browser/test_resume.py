"""Reconnection in a real browser: the connection is cut mid-stream by a proxy on loopback, and
axrisi-client.js resumes with GET /api/streams/<id> and Last-Event-ID, losing and repeating
nothing. Skipped while the service has no resume endpoint."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.servers import TEST_SECRET, Gunicorn
from tests.fake_upstream import FakeUpstream, Scenario

from .conftest import token

pytestmark = pytest.mark.e2e


class CuttingProxy:
    """A TCP proxy to the service whose open connections the test can cut at once, as a flaky
    network or a sleeping laptop would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.pairs.append((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.passes(src):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def passes(self, _src: socket.socket) -> bool:
        """Whether what ``_src`` sends is forwarded (always, here)."""
        return True

    def cut(self) -> int:
        """Close every open connection, both ways; returns how many were cut."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        return len(pairs)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()


@pytest.fixture(scope="module")
def grace_server(upstream: FakeUpstream) -> Iterator[Gunicorn]:
    """The service keeping a stream generating for a while after its client left."""
    env: dict[str, Any] = {
        "JWT_SECRET_KEY": TEST_SECRET, "JWT_AUDIENCE": None, "JWT_ISSUER": None,
        "OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "sk-test-0123456789",
        "AXRISI_RESUME_GRACE_SECONDS": "10", "AXRISI_MAX_STREAMS_PER_USER": "0",
        "AXRISI_RATE_LIMIT": "100000/minute", "AXRISI_HEARTBEAT_SECONDS": "1",
    }
    with Gunicorn(env) as gunicorn:
        probe = requests.get(gunicorn.url + "/api/streams/1", timeout=5,
                             headers={"Authorization": f"Bearer {token()}"})
        if probe.status_code == 405 or probe.json().get("error", "").startswith(
                "There is nothing at this address"):
            pytest.skip("the service has no GET /api/streams/<id> yet")
        yield gunicorn


def test_cut_connection_resumes_without_loss_or_repeat(page: Any, grace_server: Gunicorn,
                                                       upstream: FakeUpstream) -> None:
    """A stream cut mid-way resumes with Last-Event-ID and ends with the exact content."""
    key = f"resume-{uuid.uuid4().hex[:10]}"
    tokens = [f"t{i} " for i in range(60)]
    upstream.add_scenario(key, Scenario(tokens=tokens, delay=0.03))
    proxy = CuttingProxy(grace_server.port)
    try:
        page.goto(proxy.url + "/")
        page.evaluate(
            """async ({token, text}) => {
                const client = await import('/static/axrisi-client.js');
                window.pieces = [];
                window.reconnects = [];
                window.outcome = client.streamCommand({
                  token, command: 'summarize', text,
                  onContent: (piece) => window.pieces.push(piece),
                  onReconnect: (info) => window.reconnects.push(info.lastEventId),
                }).then((r) => ({ok: true, content: r.content, done: r.done.done}),
                        (e) => ({ok: false, code: e.code, error: e.error}));
            }""",
            {"token": token(), "text": f"Cut me {key}"},
        )
        record = upstream.wait_for_request(key)
        page.wait_for_function("() => window.pieces.length >= 5")
        assert proxy.cut() >= 1
        outcome = page.evaluate("() => window.outcome")
        assert outcome == {"ok": True, "content": "".join(tokens), "done": True}
        assert "".join(page.evaluate("() => window.pieces")) == "".join(tokens)
        reconnects = page.evaluate("() => window.reconnects")
        assert len(reconnects) == 1 and reconnects[0].rsplit("-", 1)[1].isdigit()
        assert record.completed.is_set(), "the generation should have gone on during the cut"
    finally:
        proxy.close()
