"""The SDK's HTTP/1.1 transport to the model through urllib3, the alternative to LeanTransport.

Selected with ``AXRISI_UPSTREAM_TRANSPORT=urllib3`` (the default is ``lean``,
:mod:`axrisi.providers.transport`). Both plug into the SDK's httpx2 client through httpx2's
``BaseTransport``; the SDK still builds, authenticates, sends and interprets every request.
How the two compare, measured: ``docs/benchmarks.md``, "The upstream transport".

What it does: one ``urllib3.PoolManager`` (a pool per origin, keep-alive, ``IDLE_PER_ORIGIN`` idle
connections kept, more opened when needed and closed when they come back); TLS with the SSL
context the provider hands in (the SDK's, ``httpx2.create_ssl_context()``), its verify mode
included; ``retries=False`` and ``redirect=False`` (the SDK decides); the request's connect and
read timeouts (the provider sets no read timeout: its silence watchdog covers the body); the
body streamed as it arrives, ``decode_content=False`` (httpx2 decodes, as with LeanTransport).
Closing a body read to its end gives its connection back to the pool; closing it earlier closes
the connection at once, which is how the upstream learns that a cancelled stream has no reader.

Every urllib3 (and ``http.client``, ``OSError``) failure becomes an httpx2 exception in one place,
:func:`map_exceptions`, so the SDK and the provider see the types they see with LeanTransport.
Unlike LeanTransport, a request that meets a reused connection the server closed at that very
moment is not sent again (urllib3 only drops idle connections already seen closed, and
``retries=False``); the provider reports it as a connection failure.

Under gevent, urllib3 makes its sockets through the ``socket`` module at call time, so the
gunicorn gevent worker's monkey-patching applies (``tests/test_urllib3_transport.py`` checks it).
"""

from __future__ import annotations

import http.client
import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import urllib3
from urllib3 import exceptions as u3

from .transport import BODY_EXTENSION

IDLE_PER_ORIGIN = 32
"""Idle keep-alive connections kept per origin (urllib3's ``maxsize``, never blocking)."""
READ_SIZE = 65536


class _PoolFull(logging.Filter):
    """urllib3 warns on every connection it closes past ``maxsize``: here that is by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Connection pool is full")


logging.getLogger("urllib3.connectionpool").addFilter(_PoolFull())


@contextmanager
def map_exceptions(request: httpx2.Request | None = None) -> Iterator[None]:
    """Raise httpx2's exception for urllib3's (or the socket's) failure: the one place that maps.

    The sentences hold no address (urllib3's own name the host and port).
    """
    try:
        yield
    except (u3.HTTPError, http.client.HTTPException, OSError, ValueError) as error:
        kind, sentence = _mapped(error)
        raise kind(f"{sentence} ({_reason(error)}).", request=request) from None


def _mapped(error: BaseException) -> tuple[type[httpx2.RequestError], str]:
    # Order matters: NewConnectionError subclasses ConnectTimeoutError in urllib3 2.x.
    if isinstance(error, u3.NewConnectionError):
        return httpx2.ConnectError, "Connection failed"
    if isinstance(error, u3.ConnectTimeoutError):
        return httpx2.ConnectTimeout, "Timed out connecting"
    if isinstance(error, (u3.ReadTimeoutError, TimeoutError)):
        return httpx2.ReadTimeout, "Timed out reading the response"
    if isinstance(error, (u3.SSLError, ssl.SSLError)):
        return httpx2.ConnectError, "TLS failed"
    if isinstance(error, u3.EmptyPoolError):
        return httpx2.PoolTimeout, "No connection available"
    if isinstance(error, u3.DecodeError):
        return httpx2.DecodingError, "Could not decode the response"
    if isinstance(error, u3.ProtocolError):
        cause = error.args[1] if len(error.args) > 1 else None
        if isinstance(cause, OSError) and not isinstance(cause, http.client.HTTPException):
            return httpx2.ReadError, "Reading the response failed"
        return httpx2.RemoteProtocolError, "The server broke the HTTP exchange"
    if isinstance(error, http.client.HTTPException):
        return httpx2.RemoteProtocolError, "The server broke the HTTP exchange"
    if isinstance(error, ValueError):  # http.client refuses illegal header names and values
        return httpx2.LocalProtocolError, "The request cannot be sent"
    if isinstance(error, OSError):
        return httpx2.ReadError, "Reading the response failed"
    return httpx2.RemoteProtocolError, "The HTTP exchange failed"


def _reason(error: BaseException) -> str:
    """The innermost cause's name and OS reason, never its text (which may name the host)."""
    seen = error
    while True:
        cause = seen.args[1] if (isinstance(seen, u3.ProtocolError) and len(seen.args) > 1
                                 and isinstance(seen.args[1], BaseException)) else None
        cause = cause or seen.__cause__ or seen.__context__
        if cause is None or cause is seen:
            break
        seen = cause
    strerror = getattr(seen, "strerror", None)
    return f"{type(seen).__name__}: {strerror}" if strerror else type(seen).__name__


class Urllib3Transport(httpx2.BaseTransport):
    """HTTP/1.1 keep-alive transport for httpx2 (and so for the openai SDK) over urllib3."""

    def __init__(self, ssl_context: ssl.SSLContext, idle_per_origin: int = IDLE_PER_ORIGIN) -> None:
        self._pools = urllib3.PoolManager(
            num_pools=16, maxsize=idle_per_origin, block=False,
            ssl_context=ssl_context, cert_reqs=ssl_context.verify_mode)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        timeouts = request.extensions.get("timeout") or {}
        headers = urllib3.HTTPHeaderDict()
        for name, value in request.headers.raw:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        with map_exceptions(request):
            pool = self._pools.connection_from_host(url.host, url.port, url.scheme)
            response = pool.urlopen(
                request.method, url.raw_path.decode("ascii"), body=request.read() or None,
                headers=headers, retries=False, redirect=False, assert_same_host=False,
                timeout=urllib3.Timeout(connect=timeouts.get("connect"),
                                        read=timeouts.get("read")),
                preload_content=False, decode_content=False, release_conn=False)
        body = _Body(response)
        version = b"HTTP/1.0" if response.version == 10 else b"HTTP/1.1"
        return httpx2.Response(
            response.status, headers=list(response.headers.iteritems()), stream=body,
            extensions={"http_version": version,
                        "reason_phrase": (response.reason or "").encode("latin-1"),
                        BODY_EXTENSION: body})

    def close(self) -> None:
        self._pools.clear()

    def idle_connections(self) -> int:
        """How many open keep-alive connections wait in the pools (for tests and diagnostics)."""
        count = 0
        for key in self._pools.pools.keys():
            pool = self._pools.pools.get(key)
            queue = getattr(pool, "pool", None)
            for conn in list(getattr(queue, "queue", ())):
                count += conn is not None and conn.is_connected
        return count


class _Body(httpx2.SyncByteStream):
    """The response body as it arrives: one piece per HTTP chunk, or per network read."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response: urllib3.BaseHTTPResponse | None = response
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        if response is None:
            return
        with map_exceptions():
            if isinstance(response, urllib3.HTTPResponse) and response.chunked \
                    and response.supports_chunked_reads():
                # urllib3's own chunk reader: one error-catching context for the whole body,
                # one piece per HTTP chunk (an SSE server writes one event per chunk).
                yield from response.read_chunked(READ_SIZE, decode_content=False)
            else:
                # Content-Length or read-to-close: at most one network read per piece
                # (``stream()`` would wait until READ_SIZE bytes arrived).
                read1 = response.read1
                while data := read1(READ_SIZE, decode_content=False):
                    yield data
        self._complete = True

    def pullable(self) -> None:
        """Never read by the pump (``openai_compat.BodyPump``): urllib3 reads through its own
        file objects, which a readiness callback cannot drive without blocking."""
        return None

    def close(self) -> None:
        """Give the connection back if the body was read to its end, else close it now."""
        response, self._response = self._response, None
        if response is None:
            return
        if self._complete:
            response.drain_conn()
        else:
            response.close()  # the socket and the response's file object: FIN at once
        response.release_conn()
