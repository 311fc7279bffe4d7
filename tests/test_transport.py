"""LeanTransport against real sockets: scripted HTTP/1.1 servers on loopback, plain and TLS.

Each server runs one handler per accepted connection in a thread and records what it saw, so the
tests check the wire (how many connections, when the client closed), not the transport's word.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from axrisi.providers.transport import LeanTransport
from axrisi.providers.urllib3_transport import Urllib3Transport
from tests.certs import server_context
from tests.fake_upstream import FakeUpstream, Scenario

Handler = Callable[[socket.socket, int], None]

SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def read_request(conn: socket.socket) -> bytes:
    """Read one request (head and Content-Length body); b"" if the client closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = conn.recv(65536)
        if not part:
            return b""
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


class ScriptedServer:
    """A loopback server running ``handler(conn, n)`` for its n-th connection, in a thread."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            index = self.connections
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handler(conn, index)
        except OSError:
            pass
        finally:
            conn.close()

    def read(self, conn: socket.socket) -> bytes:
        request = read_request(conn)
        if request:
            self.requests.append(request)
        return request

    def wait_client_close(self, conn: socket.socket) -> None:
        """Block until the client closes its side, then record it."""
        conn.settimeout(5)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        self.closed_by_client.set()

    def close(self) -> None:
        self.listener.close()
        for thread in self._threads:
            thread.join(2)


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(handler: Handler, tls: ssl.SSLContext | None = None) -> ScriptedServer:
        server = ScriptedServer(handler, tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


TRANSPORTS: dict[str, type[LeanTransport] | type[Urllib3Transport]] = {
    "lean": LeanTransport, "urllib3": Urllib3Transport}
MakeClient = Callable[..., tuple[httpx2.Client, "LeanTransport | Urllib3Transport"]]


@pytest.fixture(params=sorted(TRANSPORTS))
def make_client(request: pytest.FixtureRequest) -> MakeClient:
    """A client over each transport in turn: these wire checks hold for both (where the two
    differ on purpose, each has its own test: here for LeanTransport, in
    test_urllib3_transport.py for the other)."""
    kind = TRANSPORTS[request.param]

    def make(timeout: httpx2.Timeout | None = None, tls: ssl.SSLContext | None = None,
             ) -> tuple[httpx2.Client, LeanTransport | Urllib3Transport]:
        transport = kind(tls or ssl.create_default_context())
        return httpx2.Client(transport=transport, timeout=timeout or httpx2.Timeout(5.0)), \
            transport

    return make


def client(timeout: httpx2.Timeout | None = None,
           tls: ssl.SSLContext | None = None) -> tuple[httpx2.Client, LeanTransport]:
    transport = LeanTransport(tls or ssl.create_default_context())
    return httpx2.Client(transport=transport, timeout=timeout or httpx2.Timeout(5.0)), transport


def test_chunked_body_arrives_piece_by_piece_and_the_connection_is_reused(
        serve, make_client: MakeClient) -> None:
    gate = threading.Event()

    def handler(conn: socket.socket, _: int) -> None:
        while server.read(conn):
            conn.sendall(SSE_HEAD + chunk(b"data: one\n\n"))
            gate.wait(5)
            conn.sendall(chunk(b"data: two\n\n") + b"0\r\n\r\n")

    server = serve(handler)
    http, transport = make_client()
    for _ in range(3):
        gate.clear()
        with http.stream("POST", server.url + "/v1/x", content=b'{"a":1}') as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            pieces = response.iter_raw()
            assert next(pieces) == b"data: one\n\n"  # before the server sent the rest
            gate.set()
            assert b"".join(pieces) == b"data: two\n\n"
    assert server.connections == 1
    assert transport.idle_connections() == 1
    assert server.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert server.requests[0].endswith(b'\r\n\r\n{"a":1}')
    assert b"\r\nhost: 127.0.0.1:" in server.requests[0].lower()


def test_content_length_body(serve, make_client: MakeClient) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        while server.read(conn):
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\nhello world")

    server = serve(handler)
    http, _ = make_client()
    assert http.get(server.url + "/a").text == "hello world"
    response = http.get(server.url + "/b")
    assert (response.status_code, response.text) == (404, "hello world")
    assert server.connections == 1


def test_body_delimited_by_close_is_read_to_the_end_and_not_pooled(
        serve, make_client: MakeClient) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ")
        conn.sendall(b"part two")
        conn.shutdown(socket.SHUT_WR)

    server = serve(handler)
    http, transport = make_client()
    assert http.get(server.url).text == "part one, part two"
    assert http.get(server.url).text == "part one, part two"
    assert server.connections == 2
    assert transport.idle_connections() == 0


def test_an_idle_connection_the_server_closed_is_not_reused(serve, make_client: MakeClient) -> None:
    answered = threading.Event()

    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        answered.set()
        # Keep-alive was promised, but the server closes the idle connection at once.

    server = serve(handler)
    http, _ = make_client()
    assert http.get(server.url).text == "ok"
    answered.wait(5)
    threading.Event().wait(0.1)  # let the FIN arrive
    assert http.get(server.url).text == "ok"
    assert server.connections == 2


def test_a_reused_connection_closed_before_answering_is_retried_once(serve) -> None:
    def handler(conn: socket.socket, index: int) -> None:
        server.read(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(index).encode())
        if index == 0:
            server.read(conn)  # the second request arrives on the idle connection...
            return  # ...and the server closes without a byte of answer

    server = serve(handler)
    http, _ = client()
    assert http.get(server.url).text == "0"
    assert http.get(server.url).text == "1"
    assert server.connections == 2


def test_a_new_connection_closed_before_answering_is_an_error(
        serve, make_client: MakeClient) -> None:
    server = serve(lambda conn, _: server.read(conn))
    http, _ = make_client()
    with pytest.raises(httpx2.RemoteProtocolError):
        http.get(server.url)
    assert server.connections == 1  # not retried: nothing suggests a stale connection


def test_a_truncated_body_is_a_protocol_error(serve, make_client: MakeClient) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        conn.sendall(SSE_HEAD + chunk(b"data: one\n\n"))

    server = serve(handler)
    http, transport = make_client()
    with http.stream("GET", server.url) as response:
        with pytest.raises(httpx2.RemoteProtocolError):
            for _ in response.iter_raw():
                pass
    assert transport.idle_connections() == 0


def test_a_malformed_answer_is_a_protocol_error(serve, make_client: MakeClient) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        conn.sendall(b"SMTP ready\r\n\r\n")

    server = serve(handler)
    http, _ = make_client()
    with pytest.raises(httpx2.RemoteProtocolError):
        http.get(server.url)


def test_refused_connection_is_a_connect_error(make_client: MakeClient) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    http, _ = make_client()
    with pytest.raises(httpx2.ConnectError):
        http.get(f"http://127.0.0.1:{port}/")


def test_read_timeout(serve, make_client: MakeClient) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        server.wait_client_close(conn)

    server = serve(handler)
    http, _ = make_client(timeout=httpx2.Timeout(5.0, read=0.2))
    with pytest.raises(httpx2.ReadTimeout):
        http.get(server.url)
    assert server.closed_by_client.wait(5)


def test_closing_a_response_early_closes_its_connection(serve, make_client: MakeClient) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        server.read(conn)
        conn.sendall(SSE_HEAD + chunk(b"data: one\n\n"))
        server.wait_client_close(conn)

    server = serve(handler)
    http, transport = make_client()
    with http.stream("GET", server.url) as response:
        assert next(response.iter_raw()) == b"data: one\n\n"
    assert server.closed_by_client.wait(5)
    assert transport.idle_connections() == 0


def test_header_injection_is_refused_before_sending(serve, make_client: MakeClient) -> None:
    server = serve(lambda conn, _: server.read(conn))
    http, _ = make_client()
    with pytest.raises(httpx2.LocalProtocolError):
        http.get(server.url, headers={"X-Bad": "a\r\nInjected: yes"})
    assert server.requests == []


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh certificate for 127.0.0.1, and a client that trusts it."""
    server_ctx, cert_file = server_context(tmp_path)
    return server_ctx, ssl.create_default_context(cafile=str(cert_file))


def test_tls_streams_and_pools(serve, tmp_path: Path, make_client: MakeClient) -> None:
    server_ctx, client_ctx = self_signed(tmp_path)

    def handler(conn: socket.socket, _: int) -> None:
        while server.read(conn):
            conn.sendall(SSE_HEAD + chunk(b"data: secret\n\n") + b"0\r\n\r\n")

    server = serve(handler, tls=server_ctx)
    http, transport = make_client(tls=client_ctx)
    for _ in range(2):
        assert http.get(server.url).text == "data: secret\n\n"
    assert server.connections == 1
    assert transport.idle_connections() == 1


def test_tls_refuses_an_untrusted_certificate(
        serve, tmp_path: Path, make_client: MakeClient) -> None:
    server_ctx, _ = self_signed(tmp_path)
    server = serve(lambda conn, _: server.read(conn), tls=server_ctx)
    http, _ = make_client()  # the system's roots do not include the test certificate
    with pytest.raises(httpx2.ConnectError):
        http.get(server.url)


def test_the_sdk_maps_status_errors_through_the_transport() -> None:
    with FakeUpstream() as upstream:
        upstream.add_scenario("k429", Scenario(status=429))
        sdk = openai.OpenAI(api_key="sk-test", base_url=upstream.base_url, max_retries=0,
                            http_client=openai.DefaultHttpxClient(
                                transport=LeanTransport(ssl.create_default_context())))
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="m", stream=True,
                                        messages=[{"role": "user", "content": "k429"}])
        stream = sdk.chat.completions.create(model="m", stream=True,
                                             messages=[{"role": "user", "content": "hi"}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "Hello, world!"
