"""A real OpenAI-compatible HTTP server on loopback, for end-to-end tests of the relay.

Why a hand-written server instead of patching the SDK: the service under test must talk to its
upstream over real TCP with the official ``openai`` SDK, so that connection pooling, chunked
decoding, timeouts and cancellation all run for real. The fake therefore speaks raw HTTP/1.1
(keep-alive, ``Transfer-Encoding: chunked``, ``text/event-stream``) from plain OS threads, which
works inside an un-patched pytest process and standalone::

    python tests/fake_upstream.py --port 9999

Its real purpose is observation: every request becomes a :class:`RequestRecord` that says how many
tokens were written and, above all, whether and when the *client* hung up before the response
ended. To notice a hang-up promptly the server never sleeps blindly: every wait is a ``poll`` on
the client socket (EOF or reset means "closed") plus a wake-up socket used by :meth:`stop`.

Behaviour is chosen per request by a :class:`Scenario`, selected by a key string that the test
puts somewhere in the messages' content (see :meth:`FakeUpstream.add_scenario`).
"""

from __future__ import annotations

import argparse
import contextlib
import http
import itertools
import json
import logging
import math
import select
import signal
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

try:  # orjson is optional: it is faster, but the standard library is enough.
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TOKENS",
    "SECRET_MARKER",
    "default_error_body",
    "FakeUpstream",
    "RequestRecord",
    "Scenario",
]

log = logging.getLogger(__name__)

SECRET_MARKER = "sk-upstream-secret"
"""Planted in every upstream error message so tests can assert it never reaches a browser."""

DEFAULT_MODEL = "fake-model"
DEFAULT_TOKENS: tuple[str, ...] = ("Hello", ",", " world", "!")

_MAX_HEAD_BYTES = 64 * 1024
_RECV_BYTES = 64 * 1024


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """How the fake answers one request; every field has a harmless default.

    Interruption points (``reset_after``, ``hang_after``, ``error_event_after``) count content
    tokens already written: ``0`` acts after the headers and role chunk, before the first token;
    ``len(tokens)`` acts after the last token, before the finish chunk.
    """

    tokens: list[str] = field(default_factory=lambda: list(DEFAULT_TOKENS))
    delay: float = 0.0
    """Seconds of silence between two content tokens."""
    first_token_delay: float = 0.0
    """Seconds of silence after the headers and role chunk, before the first token."""
    header_delay: float = 0.0
    """Seconds of silence before the status line: a slow time-to-first-byte."""
    status: int | None = None
    """Answer with this HTTP status and a JSON error body instead of streaming."""
    error_body: dict[str, Any] | None = None
    """The JSON error body; default: OpenAI's error shape carrying :data:`SECRET_MARKER`."""
    response_headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers, e.g. ``{"retry-after": "0"}`` for a 429."""
    reset_after: int | None = None
    """After this many tokens, abort the TCP connection with an RST and no terminating chunk."""
    hang_after: int | None = None
    """After this many tokens, go silent until the client closes or the server stops."""
    error_event_after: int | None = None
    """After this many tokens, send an in-stream ``{"error": ...}`` event and end the response."""
    finish_reason: str = "stop"
    usage: tuple[int, int] | None = None
    """(prompt, completion) tokens; default: words in the messages, number of tokens."""
    include_usage_chunk: bool = True
    """Send the usage chunk when the request asks for it (``stream_options.include_usage``)."""
    send_role_chunk: bool = True
    """Send the leading ``{"role": "assistant", "content": ""}`` chunk with the headers."""
    reasoning: list[str] = field(default_factory=list)
    """Reasoning tokens, sent before the content tokens (as DeepSeek, Qwen3 and gpt-oss do),
    each in its own chunk whose delta has ``content: null``."""
    reasoning_field: str = "reasoning_content"
    """The delta's field for reasoning: ``reasoning_content`` (vLLM, llama.cpp, DeepSeek) or
    ``reasoning`` (OpenRouter)."""
    reasoning_delay: float = 0.0
    """Seconds of silence before each reasoning token."""


@dataclass(eq=False)
class RequestRecord:
    """What the fake saw and did for one request; filled in live by the connection's thread."""

    method: str
    path: str
    body: Any
    """The parsed JSON body, or ``None`` (no body, or not JSON)."""
    headers: dict[str, str]
    """Request headers with lower-cased names."""
    scenario_key: str | None
    """The key of the matched scenario; ``None`` for the default scenario."""
    scenario: Scenario
    connection_id: int
    """Which TCP connection carried the request; equal ids prove keep-alive reuse."""
    started: float = field(default_factory=time.monotonic)
    tokens_sent: int = 0
    status: int | None = None
    completed: threading.Event = field(default_factory=threading.Event)
    """Set once the response was written to its very end."""
    client_closed: threading.Event = field(default_factory=threading.Event)
    """Set when the client closed the connection before the response was complete."""
    closed_at: float | None = None
    completed_at: float | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _ended: bool = field(default=False, repr=False)
    _claimed: bool = field(default=False, repr=False)

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Wait until the client hung up mid-response; ``False`` if it did not within timeout."""
        return self.client_closed.wait(timeout)

    def wait_completed(self, timeout: float = 5.0) -> bool:
        """Wait until the response was written to its end."""
        return self.completed.wait(timeout)

    def wait_tokens(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` tokens were sent; gives up early once the response ended."""
        with self._cond:
            self._cond.wait_for(lambda: self.tokens_sent >= n or self._ended, timeout)
            return self.tokens_sent >= n

    def wait_ended(self, timeout: float = 5.0) -> bool:
        """Wait until the handler stopped working on this request, however it ended."""
        with self._cond:
            return self._cond.wait_for(lambda: self._ended, timeout)

    # Called by the server thread only.

    def _token_sent(self) -> None:
        with self._cond:
            self.tokens_sent += 1
            self._cond.notify_all()

    def _mark_completed(self) -> None:
        self.completed_at = time.monotonic()
        self.completed.set()

    def _mark_client_closed(self) -> None:
        if not self.completed.is_set() and not self.client_closed.is_set():
            self.closed_at = time.monotonic()
            self.client_closed.set()

    def _mark_ended(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()


# --------------------------------------------------------------------------------------------
# Low-level helpers
# --------------------------------------------------------------------------------------------


class _Abort(Exception):
    """Base of the control-flow exceptions that end a connection's handler."""


class _ClientClosed(_Abort):
    """The client went away: EOF, reset or a failed write."""


class _ServerClosing(_Abort):
    """The server is stopping (or dropping this connection) and the handler must end."""


class _ConnectionReset(_Abort):
    """The scenario reset the connection on purpose; the socket is already gone."""


class _BadRequest(Exception):
    """The client sent something that is not HTTP/1.x we understand."""


def _dumps(obj: Any) -> bytes:
    """Compact JSON; the standard library escapes what orjson refuses (lone surrogates)."""
    if orjson is not None:
        with contextlib.suppress(TypeError):
            return orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def _wait_readable(fds: list[int], timeout: float | None) -> set[int]:
    """The subset of ``fds`` that is readable (or hung up) within ``timeout`` seconds."""
    if hasattr(select, "poll"):
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN | select.POLLPRI)
        millis = None if timeout is None else max(0, math.ceil(timeout * 1000))
        return {fd for fd, _events in poller.poll(millis)}
    readable, _w, _x = select.select(fds, [], [], timeout)  # pragma: no cover - Windows
    return set(readable)


def _http_chunk(data: bytes) -> bytes:
    """One ``Transfer-Encoding: chunked`` frame."""
    return b"%x\r\n%s\r\n" % (len(data), data)


_LAST_CHUNK = b"0\r\n\r\n"


def _sse(obj: Any) -> bytes:
    """One SSE event as an HTTP chunk: ``data: <json>`` and a blank line."""
    return _http_chunk(b"data: " + _dumps(obj) + b"\n\n")


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


def _response_head(status: int, headers: dict[str, str]) -> bytes:
    lines = [_status_line(status)]
    lines += [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items()]
    return b"".join(lines) + b"\r\n"


def _message_texts(body: Any) -> list[str]:
    """Every text in ``messages[*].content``, whether a string or a list of content parts."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return []
    texts: list[str] = []
    for message in body["messages"]:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            ]
    return texts


def _error_type(status: int) -> tuple[str, str]:
    """OpenAI's (type, code) for a status, so the SDK and the service see realistic errors."""
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status < 500:
        return "invalid_request_error", "bad_request"
    return "server_error", "upstream_failure"


def default_error_body(status: int, address: str) -> dict[str, Any]:
    """An OpenAI-shaped error whose message leaks a secret and the upstream address on purpose."""
    error_type, code = _error_type(status)
    message = f"Upstream {address} failed ({status}) for key {SECRET_MARKER}-0123456789"
    return {"error": {"message": message, "type": error_type, "code": code, "param": None}}


# --------------------------------------------------------------------------------------------
# One client connection
# --------------------------------------------------------------------------------------------


@dataclass
class _HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


class _Connection:
    """A client socket whose every wait also watches for the client hanging up or a stop."""

    def __init__(self, sock: socket.socket, conn_id: int, wake_fd: int) -> None:
        self.sock = sock
        self.id = conn_id
        self.busy = False
        self._wake_fd = wake_fd
        self._buffer = bytearray()
        self._dropped_by_server = False

    # Waiting -------------------------------------------------------------------------------

    def _poll(self, timeout: float | None) -> bool:
        """True when the client socket is readable; raises if the server is stopping."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True  # decrypted already: the descriptor's readiness would not show it
        ready = _wait_readable([self.sock.fileno(), self._wake_fd], timeout)
        if self._wake_fd in ready or self._dropped_by_server:
            raise _ServerClosing
        return bool(ready)

    def _receive(self) -> None:
        """Read what is available; EOF or reset means the client is gone."""
        try:
            data = self.sock.recv(_RECV_BYTES)
        except OSError as exc:  # ECONNRESET and friends, or our own shutdown() from stop().
            raise self._gone() from exc
        if not data:
            raise self._gone()
        self._buffer += data  # A pipelined next request: keep it for later.

    def _gone(self) -> _Abort:
        return _ServerClosing() if self._dropped_by_server else _ClientClosed()

    def pause(self, seconds: float | None) -> None:
        """Stay silent for ``seconds`` (``None``: forever), but end at once if the client leaves."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            if self._poll(remaining):
                self._receive()

    def check_alive(self) -> None:
        """Notice a hang-up that happened while we were busy writing (no waiting)."""
        if self._poll(0):
            self._receive()

    # Reading -------------------------------------------------------------------------------

    def _read_until(self, marker: bytes, limit: int) -> bytes:
        while True:
            index = self._buffer.find(marker)
            if index >= 0:
                data = bytes(self._buffer[: index + len(marker)])
                del self._buffer[: index + len(marker)]
                return data
            if len(self._buffer) > limit:
                raise _BadRequest("request head too large")
            self._poll(None)
            self._receive()

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._poll(None)
            self._receive()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def read_request(self) -> _HttpRequest:
        """Block (watching for close and stop) until a whole request arrived."""
        while self._buffer.startswith(b"\r\n"):  # Tolerated between requests (RFC 9112).
            del self._buffer[:2]
        head = self._read_until(b"\r\n\r\n", _MAX_HEAD_BYTES).decode("latin-1")
        request_line, *header_lines = head[:-4].split("\r\n")
        try:
            method, target, version = request_line.split(" ", 2)
        except ValueError:
            raise _BadRequest(f"bad request line {request_line!r}") from None
        headers = _parse_headers(header_lines)
        if headers.get("expect", "").lower() == "100-continue":
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return _HttpRequest(method, target, version, headers, self._read_body(headers))

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked_body()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest("bad content-length") from None
        return self._read_exactly(length)

    def _read_chunked_body(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = self._read_until(b"\r\n", _MAX_HEAD_BYTES)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("bad chunk size") from None
            if size == 0:
                while self._read_until(b"\r\n", _MAX_HEAD_BYTES) != b"\r\n":
                    pass  # Trailers: ignored.
                return b"".join(parts)
            parts.append(self._read_exactly(size + 2)[:-2])

    # Writing and closing -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write everything; a failed write means the client is gone (or we are stopping)."""
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise self._gone() from exc

    def reset(self) -> None:
        """Abort with an RST: SO_LINGER 0 makes close() discard the connection."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def drop(self) -> None:
        """From another thread: unblock this connection's handler (even inside sendall)."""
        self._dropped_by_server = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _parse_headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(f"bad header line {line!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return headers


# --------------------------------------------------------------------------------------------
# Chat completion payloads
# --------------------------------------------------------------------------------------------


class _ChunkFactory:
    """Builds the ``chat.completion.chunk`` objects of one streamed response."""

    ids = itertools.count(1)
    """Shared by all responses so every completion id is unique."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-fake{next(self.ids)}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:  # Like OpenAI: "usage": null on every chunk but the last.
            chunk["usage"] = None
        chunk.update(extra)
        return chunk

    def _choice(
        self, delta: dict[str, Any], finish_reason: str | None = None
    ) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "finish_reason": finish_reason}]

    def role(self) -> dict[str, Any]:
        return self._chunk(self._choice({"role": "assistant", "content": ""}))

    def token(self, text: str) -> dict[str, Any]:
        return self._chunk(self._choice({"content": text}))

    def thought(self, text: str, name: str) -> dict[str, Any]:
        return self._chunk(self._choice({"content": None, name: text}))

    def finish(self, reason: str) -> dict[str, Any]:
        return self._chunk(self._choice({}, reason))

    def usage(self, prompt: int, completion: int, reasoning: int = 0) -> dict[str, Any]:
        return self._chunk([], usage=_usage(prompt, completion, reasoning))


def _usage(prompt: int, completion: int, reasoning: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if reasoning:  # as OpenAI, vLLM and OpenRouter report it: part of the completion tokens
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _usage_numbers(scenario: Scenario, body: Any) -> tuple[int, int, int]:
    if scenario.usage is not None:
        return (*scenario.usage, len(scenario.reasoning))
    prompt = sum(len(t.split()) for t in _message_texts(body))
    return prompt, len(scenario.tokens) + len(scenario.reasoning), len(scenario.reasoning)


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FakeUpstream:
    """An OpenAI-compatible server on a free loopback port, recording every request.

    Use as a context manager (or ``start()``/``stop()``); point the SDK at :attr:`base_url`.
    """

    def __init__(
        self,
        default: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = DEFAULT_MODEL,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.default = default or Scenario()
        self.tls: ssl.SSLContext | None = None
        """HTTPS instead of HTTP (the handshake in the connection's thread)."""
        self.cert_file: Path | None = None
        """With ``tls``, the certificate a client trusts (as ``SSL_CERT_FILE``)."""
        if tls is not None:
            self.cert_file, key_file = tls
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(self.cert_file, key_file)
        self.model = model
        self.requests: list[RequestRecord] = []
        self._host = host
        self._requested_port = port
        self._port = 0
        self._scenarios: dict[str, Scenario] = {}
        self._cond = threading.Condition()
        self._connections: dict[int, _Connection] = {}
        self._threads: set[threading.Thread] = set()
        self._accepted = 0
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # Lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Bind, listen and start accepting in a daemon thread; returns ``self``."""
        if self._listener is not None:
            raise RuntimeError("FakeUpstream can only be started once")
        self._listener = socket.create_server((self._host, self._requested_port), backlog=128)
        self._listener.setblocking(False)
        self._port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"fake-upstream-{self._port}", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Close the listener and every connection, end hanging handlers, join the threads."""
        if self._listener is None or self._stopping.is_set():
            return
        self._stopping.set()
        assert self._wake_w is not None and self._accept_thread is not None
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")  # Never read: it keeps every poll() awake from now on.
        deadline = time.monotonic() + timeout
        self._accept_thread.join(timeout)
        self._listener.close()
        with self._cond:
            connections = list(self._connections.values())
            threads = list(self._threads)
        for conn in connections:
            conn.drop()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if not any(t.is_alive() for t in threads):
            self._close_wake_sockets()
        else:
            log.warning(
                "fake upstream: %d handler thread(s) did not stop",
                sum(t.is_alive() for t in threads),
            )

    def _close_wake_sockets(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    # Addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """``host:port``, as it appears in default error messages."""
        return f"{self._host}:{self._port}"

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's ``base_url``."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self._host}:{self._port}/v1"

    # Configuration -------------------------------------------------------------------------

    def add_scenario(self, key: str, scenario: Scenario) -> Scenario:
        """Use ``scenario`` for requests whose messages' content contains ``key``.

        When several keys match, the longest wins, so ``"slow"`` and ``"slow-reset"`` coexist.
        """
        if not key:
            raise ValueError("a scenario key must not be empty")
        with self._cond:
            self._scenarios[key] = scenario
        return scenario

    def reset(self) -> None:
        """Forget recorded requests and scenarios, and restore the default scenario."""
        with self._cond:
            self.requests.clear()
            self._scenarios.clear()
            self.default = Scenario()

    def _choose_scenario(self, body: Any) -> tuple[str | None, Scenario]:
        text = "\n".join(_message_texts(body))
        with self._cond:
            for key in sorted(self._scenarios, key=len, reverse=True):
                if key in text:
                    return key, self._scenarios[key]
            return None, self.default

    # Observation ---------------------------------------------------------------------------

    def wait_for_request(self, key: str | None = None, timeout: float = 5.0) -> RequestRecord:
        """The next request not yet returned here whose scenario key is ``key``.

        ``key=None`` matches any request. Raises ``TimeoutError`` listing what did arrive.
        """

        def find() -> RequestRecord | None:
            for record in self.requests:
                if not record._claimed and (key is None or record.scenario_key == key):
                    return record
            return None

        with self._cond:
            record = self._cond.wait_for(find, timeout)
            if record is None:
                seen = [(r.method, r.path, r.scenario_key) for r in self.requests]
                raise TimeoutError(f"no request for scenario {key!r} within {timeout}s; saw {seen}")
            record._claimed = True
            return record

    def open_connections(self) -> int:
        """How many client TCP connections are open right now."""
        with self._cond:
            return len(self._connections)

    def wait_open_connections(self, count: int, timeout: float = 2.0) -> bool:
        """Wait until exactly ``count`` client connections are open (closing is asynchronous)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._connections) == count, timeout)

    @property
    def connections_accepted(self) -> int:
        """How many TCP connections were accepted since start (reuse keeps this low)."""
        with self._cond:
            return self._accepted

    def close_idle_connections(self) -> int:
        """Close idle keep-alive connections from the server side, like an upstream expiring
        them, to test what the client does with a stale pooled connection. Returns how many."""
        with self._cond:
            idle = [c for c in self._connections.values() if not c.busy]
        for conn in idle:
            conn.drop()
        return len(idle)

    # Accepting -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        listen_fd, wake_fd = self._listener.fileno(), self._wake_r.fileno()
        while not self._stopping.is_set():
            if wake_fd in _wait_readable([listen_fd, wake_fd], None):
                return
            try:
                sock, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            self._spawn_handler(sock, wake_fd)

    def _spawn_handler(self, sock: socket.socket, wake_fd: int) -> None:
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._cond:
            self._accepted += 1
            conn = _Connection(sock, self._accepted, wake_fd)
            thread = threading.Thread(
                target=self._serve_connection,
                args=(conn,),
                name=f"fake-upstream-conn-{conn.id}",
                daemon=True,
            )
            self._connections[conn.id] = conn
            self._threads.add(thread)
            self._cond.notify_all()
        thread.start()

    # Serving -------------------------------------------------------------------------------

    def _serve_connection(self, conn: _Connection) -> None:
        """Answer requests on one connection until either side closes it."""
        try:
            if self.tls is not None:
                conn.sock = self.tls.wrap_socket(conn.sock, server_side=True)
            keep_alive = True
            while keep_alive:
                request = conn.read_request()
                conn.busy = True
                keep_alive = self._handle(conn, request) and request.keep_alive
                conn.busy = False
        except (_Abort, ssl.SSLError):  # a client that left, or failed the handshake
            pass
        except _BadRequest as exc:
            with contextlib.suppress(_Abort):
                self._send_json(
                    conn, 400, _plain_error(str(exc), "invalid_request_error"), keep_alive=False
                )
        except Exception:
            log.exception("fake upstream: connection %d failed", conn.id)
        finally:
            conn.close()
            with self._cond:
                self._connections.pop(conn.id, None)
                self._threads.discard(threading.current_thread())
                self._cond.notify_all()

    def _handle(self, conn: _Connection, request: _HttpRequest) -> bool:
        """Record one request and answer it; ``False`` when the connection must not be reused."""
        body = _parse_json(request.body)
        key, scenario = (
            self._choose_scenario(body) if request.method == "POST" else (None, self.default)
        )
        record = RequestRecord(
            method=request.method,
            path=request.path,
            body=body,
            headers=request.headers,
            scenario_key=key,
            scenario=scenario,
            connection_id=conn.id,
        )
        with self._cond:
            self.requests.append(record)
            self._cond.notify_all()
        try:
            return self._route(conn, request, record)
        except _ClientClosed:
            record._mark_client_closed()
            raise
        finally:
            record._mark_ended()

    def _route(self, conn: _Connection, request: _HttpRequest, record: RequestRecord) -> bool:
        keep_alive = request.keep_alive
        if request.method == "GET" and request.path == "/v1/models":
            return self._answer_json(conn, record, 200, self._models(), keep_alive)
        if request.path != "/v1/chat/completions" or request.method != "POST":
            error = _plain_error(
                f"no route {request.method} {request.path}", "invalid_request_error"
            )
            return self._answer_json(conn, record, 404, error, keep_alive)
        if not isinstance(record.body, dict):
            error = _plain_error("the body is not a JSON object", "invalid_request_error")
            return self._answer_json(conn, record, 400, error, keep_alive)
        return self._chat(conn, record, keep_alive)

    def _chat(self, conn: _Connection, record: RequestRecord, keep_alive: bool) -> bool:
        scenario = record.scenario
        conn.pause(scenario.header_delay)
        if scenario.status is not None or scenario.error_body is not None:
            status = scenario.status or 500
            error = scenario.error_body or default_error_body(status, self.address)
            return self._answer_json(
                conn, record, status, error, keep_alive, scenario.response_headers
            )
        if record.body.get("stream") is True:
            return self._stream(conn, record, keep_alive)
        return self._complete_at_once(conn, record, keep_alive)

    # Streaming -----------------------------------------------------------------------------

    def _stream(self, conn: _Connection, record: RequestRecord, keep_alive: bool) -> bool:
        """Stream the scenario's tokens, one HTTP chunk per SSE event, honouring interruptions."""
        scenario, body = record.scenario, record.body
        chunks = _ChunkFactory(str(body.get("model") or self.model), _wants_usage(body))
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Transfer-Encoding": "chunked",
            "Cache-Control": "no-cache",
            "Connection": "keep-alive" if keep_alive else "close",
            "x-request-id": f"req_{chunks.id}",
            **scenario.response_headers,
        }
        record.status = 200
        role = _sse(chunks.role()) if scenario.send_role_chunk else b""
        conn.send(_response_head(200, headers) + role)
        for thought in scenario.reasoning:
            conn.pause(scenario.reasoning_delay)
            conn.check_alive()
            conn.send(_sse(chunks.thought(thought, scenario.reasoning_field)))
        for index in range(len(scenario.tokens) + 1):
            if self._interrupt(conn, record, index):
                return keep_alive
            if index == len(scenario.tokens):
                break
            conn.pause(scenario.first_token_delay if index == 0 else scenario.delay)
            conn.check_alive()
            conn.send(_sse(chunks.token(scenario.tokens[index])))
            record._token_sent()
        conn.check_alive()
        # The tail goes out in one write, so a client that hangs up right after reading
        # [DONE] finds a response that the server already considers complete.
        conn.send(self._stream_tail(chunks, record))
        record._mark_completed()
        return keep_alive

    def _stream_tail(self, chunks: _ChunkFactory, record: RequestRecord) -> bytes:
        scenario = record.scenario
        tail = _sse(chunks.finish(scenario.finish_reason))
        if chunks.include_usage and scenario.include_usage_chunk:
            tail += _sse(chunks.usage(*_usage_numbers(scenario, record.body)))
        return tail + _http_chunk(b"data: [DONE]\n\n") + _LAST_CHUNK

    def _interrupt(self, conn: _Connection, record: RequestRecord, sent: int) -> bool:
        """Apply the scenario's interruption due after ``sent`` tokens; ``True`` if it ended
        the response normally (an error event). Resets and hangs end by raising."""
        scenario = record.scenario
        if scenario.reset_after == sent:
            conn.reset()
            raise _ConnectionReset
        if scenario.hang_after == sent:
            conn.pause(None)  # Returns only by raising: client closed or server stopping.
        if scenario.error_event_after == sent:
            error = {
                "message": f"Upstream {self.address} broke mid-stream for key {SECRET_MARKER}-42"
            }
            error.update(type="server_error", code=None, param=None)
            conn.send(_sse({"error": error}) + _LAST_CHUNK)
            record._mark_completed()
            return True
        return False

    # Plain JSON answers --------------------------------------------------------------------

    def _complete_at_once(self, conn: _Connection, record: RequestRecord, keep_alive: bool) -> bool:
        """A non-streamed chat.completion; resets and hangs happen before any byte is sent."""
        scenario = record.scenario
        if scenario.reset_after is not None:
            conn.reset()
            raise _ConnectionReset
        if scenario.hang_after is not None:
            conn.pause(None)
        conn.pause(scenario.first_token_delay + scenario.delay * max(0, len(scenario.tokens) - 1))
        completion = {
            "id": f"chatcmpl-fake{next(_ChunkFactory.ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(record.body.get("model") or self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(scenario.tokens)},
                    "finish_reason": scenario.finish_reason,
                }
            ],
            "usage": _usage(*_usage_numbers(scenario, record.body)),
        }
        record.tokens_sent = len(scenario.tokens)
        return self._answer_json(
            conn, record, 200, completion, keep_alive, scenario.response_headers
        )

    def _models(self) -> dict[str, Any]:
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "fake-upstream"}
        return {"object": "list", "data": [model]}

    def _answer_json(
        self,
        conn: _Connection,
        record: RequestRecord,
        status: int,
        payload: Any,
        keep_alive: bool,
        extra_headers: dict[str, str] | None = None,
    ) -> bool:
        record.status = status
        self._send_json(conn, status, payload, keep_alive, extra_headers)
        record._mark_completed()
        return keep_alive

    @staticmethod
    def _send_json(
        conn: _Connection,
        status: int,
        payload: Any,
        keep_alive: bool,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        data = _dumps(payload)
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            "Connection": "keep-alive" if keep_alive else "close",
            **(extra_headers or {}),
        }
        conn.send(_response_head(status, headers) + data)


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _plain_error(message: str, error_type: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "code": None, "param": None}}


# --------------------------------------------------------------------------------------------
# Standalone use
# --------------------------------------------------------------------------------------------


def demo_scenarios() -> dict[str, Scenario]:
    """Keys to type into a chat when poking the fake by hand."""
    words = [f"word{i} " for i in range(40)]
    return {
        "slow": Scenario(tokens=words, delay=0.25),
        "wait": Scenario(first_token_delay=5.0),
        "hang": Scenario(hang_after=2),
        "reset": Scenario(tokens=words, delay=0.1, reset_after=5),
        "error500": Scenario(status=500),
        "error429": Scenario(status=429, response_headers={"retry-after": "1"}),
        "midstream": Scenario(error_event_after=2),
    }


def main(argv: list[str] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM: ``python tests/fake_upstream.py --port 9999``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between default tokens")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    upstream = FakeUpstream(Scenario(delay=args.delay), host=args.host, port=args.port)
    for key, scenario in demo_scenarios().items():
        upstream.add_scenario(key, scenario)
    done = threading.Event()
    # Explicit handlers: a shell starting us in the background may have set SIGINT to "ignore".
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with upstream:
        keys = ", ".join(demo_scenarios())
        print(f"fake upstream at {upstream.base_url}; demo keys: {keys}", flush=True)
        while not done.wait(1.0):  # A timeout keeps the main thread responsive to signals.
            pass
    print("fake upstream stopped", flush=True)


if __name__ == "__main__":
    main()
