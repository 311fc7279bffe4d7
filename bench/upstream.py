"""A fast OpenAI-compatible streaming server for the benchmark: asyncio protocols, no framework.

``POST /v1/chat/completions`` with ``"stream": true`` answers ``200`` with
``Transfer-Encoding: chunked`` SSE in OpenAI's chunk format: a role chunk (sent with the headers),
one chunk per content token, a finish chunk, a usage chunk when the request sets
``stream_options.include_usage``, then ``data: [DONE]``. Connections are HTTP/1.1 keep-alive.

Each stream's shape comes from ``key=value`` words anywhere in the last message's content, so
that it survives any prompt the relay under test wraps around the user's text::

    tag=<id> rate=<tokens per second> tokens=<count> first=<seconds before the first token>
    hold=<seconds between the last token and the finish chunk> pad=<bytes added to each token>

missing words take the command line's defaults (``hold`` and ``pad``: 0). Token ``i`` is due at
``start + first + i/rate`` (absolute times: no drift), and its content is
``"t=<time.monotonic_ns()> "`` taken right before the write (followed by ``pad`` bytes of ``x``
when asked: big tokens, for a reader slower than the model). ``CLOCK_MONOTONIC`` is one clock
for every process on a Linux machine, so the load generator's receive time minus that stamp is
the whole relay's latency.

Like a real server it stops writing a stream whose connection does not take its bytes (asyncio's
``pause_writing`` past the transport's high-water mark) and goes on at the stream's pace when the
buffer drains, instead of piling a relay's unread tokens up in its own memory.

What it observes, for the runner (``GET /_bench/stats``, ``GET /_bench/closes``):

* open connections that carried a chat request (``model_connections``) and streams still being
  written (``active_streams``): what a relay that leaks leaves behind;
* for every stream whose client closed before the end, the ``monotonic_ns`` at which that close
  was seen (``eof_received`` / ``connection_lost`` is called by the event loop as soon as the
  FIN or RST arrives), keyed by tag; the load generator records when it closed its own side, and
  the difference is the cancellation latency;
* how late the token timers fired (``lag``): a busy upstream offers less than asked, which the
  runner reports instead of blaming the relay.

``POST /_bench/reset`` aborts every stream still running and clears the records. Stand-alone::

    python bench/upstream.py --port 9100

With ``--tls-cert FILE --tls-key FILE`` (PEM) it serves the same protocol, control endpoints
included, over TLS on that port (asyncio's ``create_server(..., ssl=context)``): the upstream as
a relay meets a real model API, over HTTPS. ``bench/tlscert.py`` makes a certificate for
127.0.0.1; the client trusts it through ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import ssl
import sys
import time

try:
    import orjson

    def _loads(data: bytes):
        return orjson.loads(data)

    def _dumps(value) -> bytes:
        return orjson.dumps(value)
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    def _loads(data: bytes):
        return json.loads(data)

    def _dumps(value) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

_PARAM = re.compile(r"\b(tag|rate|tokens|first|hold|pad)=([^\s<>\"]+)")
_monotonic_ns = time.monotonic_ns

_HEAD_OK = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
    b"\r\n"
)
_CHUNK_ID = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
_TOKEN_PREFIX = b"data: " + _CHUNK_ID + b'"model":"%s","choices":[{"index":0,"delta":{"content":"t='
_TOKEN_SUFFIX = b' "},"finish_reason":null}]}\n\n'
_ROLE = (b'"model":"%s","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
         b'"finish_reason":null}]}')
_FINISH = b'"model":"%s","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
_USAGE = (b'"model":"%s","choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
          b'"total_tokens":%d}}')
_DONE = b"data: [DONE]\n\n"
_LAST_CHUNK = b"0\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(body: bytes) -> bytes:
    return _chunk(b"data: " + _CHUNK_ID + body + b"\n\n")


class Stats:
    """Counters since the last reset, and the close records the runner reads."""

    def __init__(self) -> None:
        self.connections: set[Conn] = set()
        self.streams: set[StreamState] = set()
        self.reset()

    def reset(self) -> None:
        self.started = 0
        self.completed = 0
        self.client_closed = 0
        self.aborted = 0
        self.tokens_sent = 0
        self.closes: dict[str, int] = {}
        self.seen: set[str] = set()
        self.lag_max_ns = 0
        self.lag_over_10ms = 0
        self.reset_at_ns = _monotonic_ns()

    def snapshot(self) -> dict:
        return {
            "open_connections": len(self.connections),
            "model_connections": sum(1 for c in self.connections if c.served_model),
            "active_streams": len(self.streams),
            "started": self.started,
            "completed": self.completed,
            "client_closed": self.client_closed,
            "aborted": self.aborted,
            "tokens_sent": self.tokens_sent,
            "lag_max_ms": self.lag_max_ns / 1e6,
            "lag_over_10ms": self.lag_over_10ms,
            "since_reset_s": (_monotonic_ns() - self.reset_at_ns) / 1e9,
            "pid": os.getpid(),
        }


class StreamState:
    """One streamed response in progress on one connection."""

    __slots__ = ("conn", "tag", "rate", "tokens", "sent", "start", "first", "usage",
                 "prefix", "suffix", "model", "handle", "prompt_tokens", "hold", "blocked")

    def __init__(self, conn: Conn, tag: str, rate: float, tokens: int, first: float,
                 usage: bool, model: bytes, prompt_tokens: int, hold: float = 0.0,
                 pad: int = 0) -> None:
        self.conn = conn
        self.tag = tag
        self.rate = rate
        self.tokens = tokens
        self.first = first
        self.usage = usage
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.prefix = _TOKEN_PREFIX % model
        self.suffix = (b" " + b"x" * pad if pad > 0 else b"") + _TOKEN_SUFFIX
        self.hold = hold
        self.blocked = False
        self.sent = 0
        self.start = 0.0
        self.handle: asyncio.TimerHandle | None = None


class Conn(asyncio.Protocol):
    """One client connection: parses requests one at a time, streams responses."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.stats = server.stats
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.stream: StreamState | None = None
        self.served_model = False
        self.keep_alive = True
        self.closed = False
        self.paused = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.stream is None:
            self._parse()

    def eof_received(self) -> bool:
        self._client_gone()
        return False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        """The reader caught up: go on at the stream's pace from now (no burst of late tokens)."""
        self.paused = False
        stream = self.stream
        if stream is not None and stream.blocked:
            stream.blocked = False
            stream.start = self.loop.time() - stream.first - stream.sent / stream.rate
            self._schedule(stream)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_gone()
        self.closed = True
        self.stats.connections.discard(self)

    # requests

    def _client_gone(self) -> None:
        stream = self.stream
        if stream is not None:
            now = _monotonic_ns()
            self.stats.client_closed += 1
            if stream.tag:
                self.stats.closes[stream.tag] = now
            self._end_stream()

    def _parse(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self._reply(431, {"error": "head too large"}, close=True)
            return
        head = bytes(self.buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._reply(400, {"error": "bad request line"}, close=True)
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._reply(411, {"error": "send Content-Length"}, close=True)
            return
        length = int(headers.get("content-length") or 0)
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4:end + 4 + length])
        del self.buf[:end + 4 + length]
        connection = headers.get("connection", "").lower()
        self.keep_alive = (version == "HTTP/1.1" and connection != "close") or \
            connection == "keep-alive"
        path = target.split("?", 1)[0]
        if method == "POST" and path.endswith("/chat/completions"):
            self._chat(body)
        elif path == "/_bench/stats":
            self._reply(200, self.stats.snapshot())
        elif path == "/_bench/closes":
            self._reply(200, {"closes": self.stats.closes,
                              "active": [s.tag for s in self.stats.streams],
                              "seen": sorted(self.stats.seen),
                              **self.stats.snapshot()})
        elif path == "/_bench/reset" and method == "POST":
            aborted = self.server.abort_all()
            self.stats.reset()
            self._reply(200, {"aborted": aborted})
        else:
            self._reply(404, {"error": {"message": "not found", "type": "not_found"}})

    def _reply(self, status: int, obj: dict, close: bool = False) -> None:
        body = _dumps(obj)
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required",
                  431: "Request Header Fields Too Large"}.get(status, "Error")
        close = close or not self.keep_alive
        head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n"
                f"connection: {'close' if close else 'keep-alive'}\r\n\r\n").encode()
        assert self.transport is not None
        self.transport.write(head + body)
        if close:
            self.transport.close()
        elif self.buf:
            self._parse()

    def _chat(self, body: bytes) -> None:
        try:
            request = _loads(body)
            messages = request.get("messages") or []
            text = " ".join(str(m.get("content") or "") for m in messages)
        except (ValueError, AttributeError):
            self._reply(400, {"error": {"message": "invalid JSON", "type": "invalid_request"}})
            return
        if not request.get("stream"):
            self._reply(400, {"error": {"message": "this server only streams",
                                        "type": "invalid_request"}})
            return
        params = dict(_PARAM.findall(text[-4000:]))
        defaults = self.server.defaults
        try:
            rate = float(params.get("rate", defaults.rate))
            tokens = int(params.get("tokens", defaults.tokens))
            first = float(params.get("first", defaults.first))
            hold = float(params.get("hold", 0))
            pad = int(params.get("pad", 0))
        except ValueError:
            self._reply(400, {"error": {"message": "bad rate/tokens/first/hold/pad",
                                        "type": "invalid_request"}})
            return
        model = str(request.get("model") or "bench-model").encode()[:64].replace(b'"', b"")
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        self.served_model = True
        stream = StreamState(self, params.get("tag", ""), max(rate, 0.001), max(tokens, 0),
                             max(first, 0.0), usage, model, len(text.split()), max(hold, 0.0),
                             min(max(pad, 0), 1 << 20))
        self.stream = stream
        self.stats.started += 1
        self.stats.seen.add(stream.tag)
        self.stats.streams.add(stream)
        assert self.transport is not None
        self.transport.write(_HEAD_OK + _event(_ROLE % model))
        stream.start = self.loop.time()
        self._schedule(stream)

    def _schedule(self, stream: StreamState) -> None:
        if stream.sent >= stream.tokens:
            if stream.hold > 0:  # the answer is all there; the stream stays open this long
                stream.handle = self.loop.call_later(stream.hold, self._finish, stream)
            else:
                self._finish(stream)
            return
        due = stream.start + stream.first + stream.sent / stream.rate
        stream.handle = self.loop.call_at(due, self._send_token, stream, due)

    def _send_token(self, stream: StreamState, due: float) -> None:
        if self.stream is not stream:
            return
        if self.paused:  # the connection does not take bytes: wait for resume_writing
            stream.blocked = True
            stream.handle = None
            return
        lag = self.loop.time() - due
        if lag > 0.010:
            self.stats.lag_over_10ms += 1
            lag_ns = int(lag * 1e9)
            if lag_ns > self.stats.lag_max_ns:
                self.stats.lag_max_ns = lag_ns
        event = b"%s%d%s" % (stream.prefix, _monotonic_ns(), stream.suffix)
        self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))  # type: ignore[union-attr]
        stream.sent += 1
        self.stats.tokens_sent += 1
        self._schedule(stream)

    def _finish(self, stream: StreamState) -> None:
        stream.handle = None
        out = [_event(_FINISH % stream.model)]
        if stream.usage:
            out.append(_event(_USAGE % (stream.model, stream.prompt_tokens, stream.sent,
                                        stream.prompt_tokens + stream.sent)))
        out.append(_chunk(_DONE))
        out.append(_LAST_CHUNK)
        assert self.transport is not None
        self.transport.write(b"".join(out))
        self.stats.completed += 1
        self._end_stream()
        if not self.keep_alive:
            self.transport.close()
        elif self.buf:
            self._parse()

    def _end_stream(self) -> None:
        stream = self.stream
        if stream is None:
            return
        if stream.handle is not None:
            stream.handle.cancel()
            stream.handle = None
        self.stats.streams.discard(stream)
        self.stream = None

    def abort(self) -> None:
        """Drop the connection mid-stream (reset): not counted as a client close."""
        stream = self.stream
        self.stream = None
        if stream is not None:
            if stream.handle is not None:
                stream.handle.cancel()
            self.stats.streams.discard(stream)
        if self.transport is not None:
            self.transport.abort()


class Defaults:
    def __init__(self, rate: float, tokens: int, first: float) -> None:
        self.rate = rate
        self.tokens = tokens
        self.first = first


class Server:
    def __init__(self, loop: asyncio.AbstractEventLoop, defaults: Defaults) -> None:
        self.loop = loop
        self.defaults = defaults
        self.stats = Stats()

    def abort_all(self) -> int:
        streams = list(self.stats.streams)
        for stream in streams:
            stream.conn.abort()
        self.stats.aborted += len(streams)
        return len(streams)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The server side of TLS: the certificate chain and its key (PEM files)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(host: str, port: int, defaults: Defaults, ready_fd: int | None,
                tls: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = Server(loop, defaults)
    listener = await loop.create_server(lambda: Conn(server), host, port, backlog=4096,
                                        reuse_address=True, ssl=tls)
    bound = listener.sockets[0].getsockname()[1]
    line = json.dumps({"port": bound, "pid": os.getpid(), "tls": tls is not None}) + "\n"
    if ready_fd is not None:
        os.write(ready_fd, line.encode())
        os.close(ready_fd)
    else:
        sys.stdout.write(line)
        sys.stdout.flush()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    listener.close()
    server.abort_all()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per stream")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    parser.add_argument("--first", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--ready-fd", type=int, default=None,
                        help="write the bound port as one JSON line to this fd, then close it")
    parser.add_argument("--tls-cert", metavar="FILE", default=None,
                        help="serve over TLS with this PEM certificate (chain); needs --tls-key")
    parser.add_argument("--tls-key", metavar="FILE", default=None,
                        help="the PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    asyncio.run(serve(args.host, args.port, Defaults(args.rate, args.tokens, args.first),
                      args.ready_fd, tls))


if __name__ == "__main__":
    main()
