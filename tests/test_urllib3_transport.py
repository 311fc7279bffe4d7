"""Urllib3Transport against real sockets: the scripted loopback servers of test_transport.py.

The wire checks both transports share run for both there (its ``make_client`` fixture); here are
the ones only this transport has, and the one place where the two differ on purpose: a reused
connection the server closes as the request arrives is not sent again here (``retries=False``).
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from axrisi.providers.base import Finish, Prompt
from axrisi.providers.openai_compat import OpenAIProvider
from axrisi.providers.transport import BODY_EXTENSION
from axrisi.providers.urllib3_transport import Urllib3Transport
from tests.fake_upstream import FakeUpstream, Scenario
from tests.test_transport import SSE_HEAD, ScriptedServer, chunk, read_request, self_signed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(handler: Callable[[socket.socket, int], None],
              tls: ssl.SSLContext | None = None) -> ScriptedServer:
        server = ScriptedServer(handler, tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def client(timeout: httpx2.Timeout | None = None,
           tls: ssl.SSLContext | None = None) -> tuple[httpx2.Client, Urllib3Transport]:
    transport = Urllib3Transport(tls or ssl.create_default_context())
    return httpx2.Client(transport=transport, timeout=timeout or httpx2.Timeout(5.0)), transport


def reset(conn: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_the_body_extension_is_the_stream_the_provider_reads(serve) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        conn.sendall(SSE_HEAD + chunk(b"data: a\n\n") + chunk(b"data: b\n\n") + b"0\r\n\r\n")

    server = serve(handler)
    http, _ = client()
    with http.stream("GET", server.url) as response:
        assert list(response.extensions[BODY_EXTENSION]) == [b"data: a\n\n", b"data: b\n\n"]


def test_a_content_length_body_is_not_held_back_until_complete(serve) -> None:
    gate = threading.Event()

    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nfirst half")
        gate.wait(5)
        conn.sendall(b"secondhalf")

    server = serve(handler)
    http, _ = client()
    with http.stream("GET", server.url) as response:
        pieces = response.iter_raw()
        assert next(pieces) == b"first half"
        gate.set()
        assert b"".join(pieces) == b"secondhalf"


def test_a_reused_connection_closed_before_answering_is_not_retried(serve) -> None:
    """The difference from LeanTransport: retries=False, so this race is the caller's error."""
    def handler(conn: socket.socket, index: int) -> None:
        server.read(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(index).encode())
        if index == 0:
            server.read(conn)

    server = serve(handler)
    http, _ = client()
    assert http.get(server.url).text == "0"
    with pytest.raises(httpx2.RemoteProtocolError):
        http.get(server.url)
    assert http.get(server.url).text == "1"
    assert server.connections == 2


@pytest.mark.parametrize("head", [SSE_HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"])
def test_a_truncated_body_is_a_protocol_error(serve, head: bytes) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        conn.sendall(head + (chunk(b"data: one\n\n") if b"chunked" in head else b"data: one"))

    server = serve(handler)
    http, transport = client()
    with http.stream("GET", server.url) as response:
        with pytest.raises(httpx2.RemoteProtocolError):
            for _ in response.iter_raw():
                pass
    assert transport.idle_connections() == 0


def test_refused_connection_is_a_connect_error_that_names_no_address() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    http, _ = client()
    with pytest.raises(httpx2.ConnectError) as caught:
        http.get(f"http://127.0.0.1:{port}/")
    assert "127.0.0.1" not in str(caught.value) and str(port) not in str(caught.value)
    assert "refused" in str(caught.value)


def test_a_reset_before_the_answer_is_a_read_error(serve) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        reset(conn)

    server = serve(handler)
    http, _ = client()
    with pytest.raises(httpx2.ReadError):
        http.get(server.url)


def test_a_reset_in_the_middle_of_the_body_is_a_read_error(serve) -> None:
    sent = threading.Event()

    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        conn.sendall(SSE_HEAD + chunk(b"data: one\n\n"))
        sent.wait(5)
        reset(conn)

    server = serve(handler)
    http, transport = client()
    with http.stream("GET", server.url) as response:
        pieces = response.iter_raw()
        assert next(pieces) == b"data: one\n\n"
        sent.set()
        with pytest.raises(httpx2.ReadError):
            next(pieces)
    assert transport.idle_connections() == 0


def test_closing_before_reading_closes_the_connection_and_the_next_request_reconnects(
        serve) -> None:
    def handler(conn: socket.socket, index: int) -> None:
        server.read(conn)
        conn.sendall(SSE_HEAD + chunk(b"data: %d\n\n" % index))
        if index == 0:
            server.wait_client_close(conn)
            return
        conn.sendall(b"0\r\n\r\n")
        server.read(conn)

    server = serve(handler)
    http, _ = client()
    with http.stream("GET", server.url):
        pass
    assert server.closed_by_client.wait(5)
    assert http.get(server.url).text == "data: 1\n\n"
    assert server.connections == 2


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_follows_the_contexts_verify_mode(serve, tmp_path: Path) -> None:
    """urllib3 would force CERT_REQUIRED on a given context; the transport passes its mode on."""
    server_ctx, _ = self_signed(tmp_path)

    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = serve(handler, tls=server_ctx)
    http, _ = client(tls=httpx2.create_ssl_context(verify=False))
    assert http.get(server.url).text == "ok"


def test_the_sdk_maps_status_errors_through_the_transport() -> None:
    with FakeUpstream() as upstream:
        upstream.add_scenario("k429", Scenario(status=429))
        sdk = openai.OpenAI(api_key="sk-test", base_url=upstream.base_url, max_retries=0,
                            http_client=openai.DefaultHttpxClient(
                                transport=Urllib3Transport(ssl.create_default_context())))
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="m", stream=True,
                                        messages=[{"role": "user", "content": "k429"}])
        stream = sdk.chat.completions.create(model="m", stream=True,
                                             messages=[{"role": "user", "content": "hi"}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "Hello, world!"


def test_the_provider_streams_through_urllib3_and_pools_finished_streams() -> None:
    with FakeUpstream() as upstream:
        upstream.add_scenario("u3", Scenario(tokens=["a", "b", "c"]))
        provider = OpenAIProvider("sk-test", upstream.base_url, "m", 10, transport="urllib3")
        assert isinstance(provider.client._client._transport, Urllib3Transport)
        # ``stream_handover`` is what a generation calls: urllib3's bodies are not pumped, so
        # it must read as ``stream`` does, with no Handover.
        for opener in (provider.stream, provider.stream_handover):
            items = list(opener(Prompt(command="c", system="s", user="u3", text="u3")))
            assert items[:-1] == ["a", "b", "c"]
            assert isinstance(items[-1], Finish) and items[-1].reason == "stop"
        first, second = upstream.wait_for_request("u3"), upstream.requests[-1]
        assert first.connection_id == second.connection_id  # keep-alive: one connection


GEVENT_CHECK = r"""
from gevent import monkey
monkey.patch_all()
import json, socket, ssl, sys
import gevent, gevent.socket, httpx2
from axrisi.providers.urllib3_transport import Urllib3Transport

port = int(sys.argv[1])
transport = Urllib3Transport(ssl.create_default_context())
http = httpx2.Client(transport=transport, timeout=httpx2.Timeout(5.0))
def get():
    return http.get(f"http://127.0.0.1:{port}/").text
# The server answers neither request before both have arrived: with blocking sockets the first
# greenlet would hold the thread and the second request would never be sent.
jobs = [gevent.spawn(get), gevent.spawn(get)]
gevent.joinall(jobs, timeout=5)
pool = transport._pools.connection_from_host("127.0.0.1", port, "http")
socks = [c.sock for c in pool.pool.queue if c is not None and c.sock is not None]
print(json.dumps({"texts": [j.value for j in jobs],
                  "gevent_sockets": [isinstance(s, gevent.socket.socket) for s in socks]}))
"""


def test_under_gevent_urllib3_uses_the_patched_sockets(serve) -> None:
    both = threading.Barrier(2, timeout=5)

    def handler(conn: socket.socket, _: int) -> None:
        read_request(conn)
        both.wait()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        read_request(conn)

    server = serve(handler)
    out = subprocess.run([sys.executable, "-c", GEVENT_CHECK, str(server.port)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30, check=True)
    result = json.loads(out.stdout)
    assert result["texts"] == ["ok", "ok"]
    assert result["gevent_sockets"] == [True, True]
