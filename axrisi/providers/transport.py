"""The SDK's HTTP/1.1 transport to the model: one socket and one C parser (httptools) per stream.

The official SDK still builds, authenticates, sends and interprets every request; this module only
moves its bytes, through httpx2's documented extension point (``BaseTransport``). Why replace
httpx2's own transport (httpcore2 + h11) on this one path? Measured in ``docs/benchmarks.md``:

* every network read of a streaming body went through five library layers (httpx2, httpcore2
  with a context manager per read, h11, gevent): about 30% of the worker's CPU per relayed token;
  here it is one ``recv`` and one call into llhttp (C);
* httpcore2's pool walks all of its connections, probing each idle one with a fresh
  ``select.poll()``, whenever a request starts or ends: O(open streams) per stream, so ramping one
  worker to 10,000 streams was quadratic and CPU-bound; here checkout and checkin are a list
  ``pop``/``append`` and one non-blocking peek;
* a streaming response held through it cost ~18 KB more than a bare socket.

What it does: HTTP/1.1 (what every OpenAI-compatible server speaks), plain or TLS (the SDK's TLS
context); keep-alive with a few idle connections per origin, most recently used first, each
checked with a non-blocking ``MSG_PEEK`` before reuse; a request on a reused connection that fails
before any byte of the answer is sent again once on a new connection (the server closed an idle
connection as we reused it); ``Content-Length``, chunked and read-to-close bodies; the request's
connect/read/write timeouts; httpx2's exception types, so the SDK maps failures as it always has.
What it does not: proxies (when the environment names one, the provider keeps httpx2's own
transport), HTTP/2, ``Expect: 100-continue``, protocol upgrades.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import httpx2

IDLE_PER_ORIGIN = 32
"""Idle keep-alive connections kept per origin; more are closed when they come back."""
READ_SIZE = 65536
BODY_EXTENSION = "axrisi.body"
"""The response extension that holds the body stream itself, for a reader that wants no
wrapper generators around it (httpx2's ``Response.stream`` is one)."""

Origin = tuple[bytes, str, int]


class _Stale(Exception):
    """A reused connection closed before answering: send the request again on a new one."""


class _Message:
    """httptools callbacks for one response: what arrived so far, nothing more."""

    __slots__ = ("headers", "body", "headers_done", "complete", "begun")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.begun = 0

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def take_body(self) -> bytes:
        """The body bytes parsed since the last call, as one piece."""
        body = self.body
        piece = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        return piece


class LeanTransport(httpx2.BaseTransport):
    """HTTP/1.1 keep-alive transport for httpx2 (and so for the openai SDK) over gevent sockets."""

    def __init__(self, ssl_context: ssl.SSLContext, idle_per_origin: int = IDLE_PER_ORIGIN) -> None:
        self._ssl = ssl_context
        self._idle_per_origin = idle_per_origin
        self._idle: dict[Origin, list[socket.socket]] = {}

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        origin = _origin(request.url)
        timeouts = request.extensions.get("timeout") or {}
        payload = _encode(request)
        for _ in range(2):
            sock, reused = self._checkout(origin, timeouts.get("connect"), request)
            try:
                parser, message = _exchange(sock, payload, timeouts, request, reused)
            except _Stale:
                sock.close()
                continue
            except BaseException:
                sock.close()
                raise
            sock.settimeout(timeouts.get("read"))
            body = _Body(self, origin, sock, parser, message)
            return httpx2.Response(parser.get_status_code(), headers=message.headers,
                                   stream=body, extensions={"http_version": b"HTTP/1.1",
                                                            BODY_EXTENSION: body})
        raise httpx2.RemoteProtocolError("Server disconnected without sending a response.",
                                         request=request)

    def close(self) -> None:
        for sockets in self._idle.values():
            for sock in sockets:
                sock.close()
        self._idle.clear()

    def idle_connections(self) -> int:
        """How many keep-alive connections wait for reuse (for tests and diagnostics)."""
        return sum(len(sockets) for sockets in self._idle.values())

    def _checkout(self, origin: Origin, connect_timeout: float | None,
                  request: httpx2.Request) -> tuple[socket.socket, bool]:
        idle = self._idle.get(origin)
        while idle:
            sock = idle.pop()
            if _reusable(sock):
                return sock, True
            sock.close()
        return self._connect(origin, connect_timeout, request), False

    def checkin(self, origin: Origin, sock: socket.socket) -> None:
        """Keep a connection whose response was read to its end, or close it if enough wait."""
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self._idle_per_origin:
            sock.close()
        else:
            idle.append(sock)

    def _connect(self, origin: Origin, timeout: float | None,
                 request: httpx2.Request) -> socket.socket:
        scheme, host, port = origin
        try:
            sock = _open_socket(host, port, timeout)
        except OSError as error:
            raise mapped(error, "connect", request) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if scheme != b"https":
            return sock
        try:
            return self._ssl.wrap_socket(sock, server_hostname=host)
        except OSError as error:
            sock.close()
            raise mapped(error, "tls", request) from None


_PHASES: dict[str, tuple[type[httpx2.TimeoutException], type[httpx2.TransportError], str]] = {
    "connect": (httpx2.ConnectTimeout, httpx2.ConnectError, "Connecting"),
    "tls": (httpx2.ConnectTimeout, httpx2.ConnectError, "The TLS handshake"),
    "write": (httpx2.WriteTimeout, httpx2.WriteError, "Sending the request"),
    "read": (httpx2.ReadTimeout, httpx2.ReadError, "Reading the response"),
}


def mapped(error: OSError, phase: str,
           request: httpx2.Request | None = None) -> httpx2.TransportError:
    """The one place a socket error becomes httpx2's exception for its phase (as httpx's
    ``map_httpcore_exceptions`` does), so that the SDK sees the types it always has. A function
    the ``except`` clauses call, not a context manager: ``_recv`` runs once per token."""
    timeout_type, error_type, what = _PHASES[phase]
    if isinstance(error, TimeoutError):
        return timeout_type(f"{what} timed out.", request=request)
    detail = error.strerror or type(error).__name__
    return error_type(f"{what} failed ({detail}).", request=request)


class _Body(httpx2.SyncByteStream):
    """A response body read straight from the socket: one piece per network read."""

    def __init__(self, transport: LeanTransport, origin: Origin, sock: socket.socket,
                 parser: httptools.HttpResponseParser, message: _Message) -> None:
        self._transport = transport
        self._origin = origin
        self._sock: socket.socket | None = sock
        self._parser = parser
        self._message = message
        self._to_close = not _has_length(message.headers)
        self._wait_readable = _readiness_wait(sock)
        self._read_now = _nonblocking_read(sock)

    def __iter__(self) -> Iterator[bytes]:
        message = self._message
        if message.body:
            yield message.take_body()
        while not message.complete and self._sock is not None:
            self._received(self._recv())
            if message.body:
                yield message.take_body()

    def _received(self, data: bytes) -> None:
        """One network read: parsed, or at the end of the connection, the end of a body
        delimited by it (else the body was cut short)."""
        if data:
            _feed(self._parser, data, None)
        elif self._to_close:
            self._message.complete = True
        else:
            raise httpx2.RemoteProtocolError(
                "peer closed connection without sending complete message body")

    def pullable(self) -> int | None:
        """The socket's descriptor when :meth:`pull` may read it (a gevent socket, plain or
        TLS), else None."""
        sock = self._sock
        if sock is None or self._read_now is None:
            return None
        return sock.fileno()

    def pull(self) -> tuple[bytes, bool]:
        """One non-blocking network read, parsed: the body bytes it carried (maybe none) and
        whether the body is complete. For a reader driven by the socket's readiness, without a
        greenlet of its own (the pump in ``axrisi.stream.generation``); errors as
        :meth:`__iter__` raises them."""
        message = self._message
        if not message.body and not message.complete and self._sock is not None:
            assert self._read_now is not None
            try:
                data = self._read_now()
            except OSError as error:
                raise mapped(error, "read") from None
            if data is None:
                return b"", False
            self._received(data)
        body = message.take_body() if message.body else b""
        return body, message.complete or self._sock is None

    def _recv(self) -> bytes:
        assert self._sock is not None
        try:
            if self._wait_readable is not None:
                self._wait_readable()
            return self._sock.recv(READ_SIZE)
        except OSError as error:
            raise mapped(error, "read") from None

    def close(self) -> None:
        """Pool the connection if its response was read to the end, else close it."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        message = self._message
        if (message.complete and message.begun == 1 and not self._to_close
                and _keep_alive(self._parser.get_http_version(), message.headers)):
            sock.settimeout(None)
            self._transport.checkin(self._origin, sock)
        else:
            sock.close()


def _readiness_wait(sock: socket.socket) -> Callable[[], None] | None:
    """Wait for the socket to be readable, on gevent's own watcher; None where not possible.

    A streamed token is one network read, and the next read almost always finds nothing yet:
    gevent's ``recv`` would first try (one failed syscall and one ``OSError`` raised and
    caught per token), then wait. Waiting first and then reading saves both. On TLS, not while
    OpenSSL holds decrypted bytes that the socket's readiness does not show.
    """
    wait = getattr(sock, "_wait", None)
    watcher = getattr(sock, "_read_event", None)
    if wait is None or watcher is None:
        return None
    if isinstance(sock, ssl.SSLSocket):
        return functools.partial(_wait_unless_pending, sock, wait, watcher)
    return functools.partial(wait, watcher)


def _wait_unless_pending(sock: ssl.SSLSocket, wait: Callable[[Any], None], watcher: Any) -> None:
    if not sock.pending():
        wait(watcher)


def _nonblocking_read(sock: socket.socket) -> Callable[[], bytes | None] | None:
    """A read that never blocks: the bytes, ``b""`` at the end of the connection, or None when
    nothing has come yet. None for a socket that is not gevent's (no non-blocking object to
    read).

    On TLS it reads OpenSSL's object directly and drains what OpenSSL already decrypted
    (``pending``) before returning, so that nothing waits behind a readiness the socket will
    not show again. OpenSSL reads one record at a time (Python leaves ``read_ahead`` off), so
    a record still in the kernel keeps the socket readable.
    """
    raw: Any = getattr(sock, "_sock", None)  # the non-blocking socket under gevent's
    if raw is None or getattr(sock, "_read_event", None) is None:
        return None
    if isinstance(sock, ssl.SSLSocket):
        sslobj: Any = getattr(sock, "_sslobj", None)
        return None if sslobj is None else functools.partial(_tls_read, sslobj)
    return functools.partial(_plain_read, raw.recv)


def _plain_read(recv: Callable[[int], bytes]) -> bytes | None:
    try:
        return recv(READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return None


def _tls_read(sslobj: Any) -> bytes | None:
    """One record's bytes and whatever else OpenSSL holds decrypted. A read that would have to
    write first (a TLS 1.3 key update while the send buffer is full, which a model server does
    not cause) reports nothing yet and is tried again on the next readiness."""
    pieces: list[bytes] = []
    while True:
        try:
            piece = sslobj.read(READ_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return b"".join(pieces) if pieces else None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            piece = b""  # the end: what came before it now, the end again on the next read
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        if not sslobj.pending():
            return b"".join(pieces)


def _origin(url: httpx2.URL) -> Origin:
    scheme = url.raw_scheme
    port = url.port or (443 if scheme == b"https" else 80)
    return scheme, url.raw_host.decode("ascii"), port


def _open_socket(host: str, port: int, timeout: float | None) -> socket.socket:
    """Connect; an IP literal skips the resolver (gevent's runs getaddrinfo in a thread)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return socket.create_connection((host, port), timeout)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _reusable(sock: socket.socket) -> bool:
    """True when an idle connection has neither been closed by the server nor sent anything.

    The peek is on the TCP socket under any TLS layer, and never blocks: ``EAGAIN`` is the answer
    we hope for.
    """
    raw: Any = getattr(sock, "_sock", None)  # gevent's sockets wrap the real one
    peek = raw.recv if raw is not None else functools.partial(socket.socket.recv, sock)
    try:
        peek(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _encode(request: httpx2.Request) -> bytes:
    """The request's head and body as the bytes to send."""
    lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    chunked = False
    for name, value in request.headers.raw:
        if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value:
            raise httpx2.LocalProtocolError("Illegal header.", request=request)
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    body = request.read()
    if chunked:
        lines += (b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n") if body else (b"0\r\n\r\n",)
    else:
        lines.append(body)
    return b"".join(lines)


def _exchange(sock: socket.socket, payload: bytes, timeouts: dict[str, Any],
              request: httpx2.Request, reused: bool) -> tuple[httptools.HttpResponseParser,
                                                              _Message]:
    """Send the request and read up to the end of the response's headers."""
    try:
        sock.settimeout(timeouts.get("write"))
        sock.sendall(payload)
    except OSError as error:
        if reused and not isinstance(error, TimeoutError):
            raise _Stale from None
        raise mapped(error, "write", request) from None
    message = _Message()
    parser = httptools.HttpResponseParser(message)
    sock.settimeout(timeouts.get("read"))
    received = False
    while not message.headers_done:
        try:
            data = sock.recv(READ_SIZE)
        except OSError as error:
            if reused and not received and not isinstance(error, TimeoutError):
                raise _Stale from None
            raise mapped(error, "read", request) from None
        if not data:
            if reused and not received:
                raise _Stale
            raise httpx2.RemoteProtocolError("Server disconnected without sending a response.",
                                             request=request)
        received = True
        _feed(parser, data, request)
    return parser, message


def _feed(parser: httptools.HttpResponseParser, data: bytes,
          request: httpx2.Request | None) -> None:
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        raise httpx2.RemoteProtocolError("Unexpected protocol upgrade.", request=request) from None
    except httptools.HttpParserError:
        raise httpx2.RemoteProtocolError("Malformed HTTP response.", request=request) from None


def _keep_alive(version: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when told to keep it.

    (llhttp's own ``should_keep_alive`` is reset once the message completes, so it cannot be
    asked when the body is done.)
    """
    tokens = [value.lower() for name, value in headers if name.lower() == b"connection"]
    if any(b"close" in token for token in tokens):
        return False
    return version == "1.1" or any(b"keep-alive" in token for token in tokens)


def _has_length(headers: list[tuple[bytes, bytes]]) -> bool:
    """True when the body ends by Content-Length or chunked framing, not by closing."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            return True
        if lowered == b"transfer-encoding" and b"chunked" in value.lower():
            return True
    return False
