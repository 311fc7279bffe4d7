"""The upstream: any OpenAI-compatible chat-completions server, through the official SDK.

One SDK client per worker, made lazily (after gunicorn forks). Its HTTP goes through
:class:`~axrisi.providers.transport.LeanTransport` (one socket and one C parser per stream: why is
in that module) unless the environment names a proxy, which only httpx2's own transport
follows. Each stream is one ``stream=True`` request with ``stream_options.include_usage``, read
through the SDK's raw-response API: we parse the SSE ``data:`` lines ourselves with orjson instead
of letting the SDK build a model object per chunk, and every network read becomes at most one
content piece, so tokens that arrive together under load travel together.

Closing is the point. The generator's ``finally`` closes the HTTP response: a response not read to
its end drops its connection, which is how the upstream learns that nobody reads any more. A
stream that ends normally is read to the end of its body first, so its connection goes back to
the pool (the SDK's own ``close()`` after ``[DONE]`` would drop it: openai-python #3440).

Errors become :class:`ProviderError` with sentences that never hold the key, the upstream's
address or its body. The SDK is built on ``httpx2``; a reset in the middle of a body surfaces as
its ``TransportError``, not as an SDK error, so both are caught.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from typing import Any

import gevent
import httpx2
import openai
import orjson

from .base import (
    Finish,
    Handover,
    Prompt,
    ProviderError,
    Pulled,
    Reasoning,
    StreamItem,
    Usage,
)
from .transport import BODY_EXTENSION, LeanTransport

log = logging.getLogger(__name__)

DRAIN_SECONDS = 2.0
"""How long to wait for the end of a body after ``[DONE]`` before dropping the connection."""


class OpenAIProvider:
    """Streams chat completions from an OpenAI-compatible server."""

    name = "openai"

    def __init__(self, api_key: str | None, base_url: str | None, model: str,
                 max_connections: int, transport: str = "lean",
                 options: dict[str, Any] | None = None) -> None:
        self.api_key = api_key or "not-needed"
        self.transport = transport  # AXRISI_UPSTREAM_TRANSPORT: "lean" or "urllib3"
        self.base_url = base_url
        self.model = model
        self.max_connections = max_connections
        self.options = options or {}
        """More fields for every request's body (the local model's temperature, seed and
        max_tokens); none for a configured upstream, whose own defaults apply."""
        self._client: openai.OpenAI | None = None

    @property
    def client(self) -> openai.OpenAI:
        """The worker's SDK client, made on first use (in the worker, never before a fork)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> openai.OpenAI:
        # No read timeout: the generation's silence watchdog (one timer per stream) enforces
        # AXRISI_UPSTREAM_TIMEOUT_SECONDS, and a socket read timeout would cost a gevent
        # Timeout per network read on the per-token path.
        timeout = httpx2.Timeout(connect=10.0, read=None, write=30.0, pool=30.0)
        tls = httpx2.create_ssl_context()
        if _environment_proxies():
            log.info("a proxy is set in the environment: using httpx2's own transport")
            http_client = openai.DefaultHttpxClient(
                limits=httpx2.Limits(max_connections=self.max_connections,
                                     max_keepalive_connections=min(self.max_connections, 32)),
                timeout=timeout, verify=tls)
        else:
            if self.transport == "urllib3":  # the measured alternative: docs/benchmarks.md
                from .urllib3_transport import Urllib3Transport
                chosen: httpx2.BaseTransport = Urllib3Transport(tls)
            else:
                chosen = LeanTransport(tls)
            http_client = openai.DefaultHttpxClient(timeout=timeout, transport=chosen)
        return openai.OpenAI(api_key=self.api_key, base_url=self.base_url, max_retries=0,
                             http_client=http_client)

    def stream(self, prompt: Prompt) -> Iterator[StreamItem]:
        """Yield content pieces as they arrive, then one Finish; close the upstream on exit."""
        return self._stream(prompt, handover=False)

    def stream_handover(self, prompt: Prompt) -> Iterator[StreamItem]:
        """As :meth:`stream`, with a :class:`Handover` once the headers are in, when the body
        can be read without a greenlet (through LeanTransport, plain or TLS, not compressed)."""
        return self._stream(prompt, handover=True)

    def _stream(self, prompt: Prompt, handover: bool) -> Iterator[StreamItem]:
        response = None
        reader = _Reader(self.model)
        try:
            response = self._open(prompt)
            del prompt  # the page's text: not kept for the stream's life (nor by the SDK, below)
            # The per-token loop, written out here rather than in a generator of the reader's:
            # each generator level costs a resumption per token and saved stack per stream.
            chunks = _body_chunks(response)
            pump = BodyPump.of(response, reader) if handover else None
            if pump is not None:
                yield Handover(pump)  # resumed only when the consumer hands the reading back
            for chunk in chunks:
                yield from reader.feed(chunk)
                if reader.failure is not None:
                    raise reader.failure
                if reader.done:
                    _drain(chunks)
                    break
            else:
                yield from reader.feed_end()
            yield reader.finish()
        except openai.APIStatusError as error:
            raise status_error(error.status_code) from None
        except openai.APITimeoutError:
            raise ProviderError("upstream_timeout", "The model service did not answer in time.",
                                "timeout") from None
        except (openai.APIConnectionError, httpx2.TransportError):
            raise connection_failed() from None
        finally:
            if response is not None:
                response.close()

    def _open(self, prompt: Prompt) -> httpx2.Response:
        """Send the request; return its HTTP response, holding neither the text nor the body.

        Through the SDK's documented raw request (``client.post(path, cast_to=httpx.Response)``,
        its README's "undocumented endpoints"), with the body encoded once by orjson: the typed
        ``chat.completions.create`` walks its TypedDict annotations over every field of every
        request (``maybe_transform``), which profiled as a fifth of a one-token request's CPU.
        Same client, same auth, headers, timeouts, transport and error types. The raw-response
        header asks it for the response unread, as ``with_streaming_response`` does.

        httpx2's response keeps the request with its encoded body (the page's text) for as long
        as the model writes: only a bodiless copy of the request is kept.
        """
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": prompt.system},
                         {"role": "user", "content": prompt.user}],
            "stream": True,
            "stream_options": {"include_usage": True},
            **self.options,
        }
        http_response = self.client.post(
            "/chat/completions", cast_to=httpx2.Response, content=orjson.dumps(body),
            options={"headers": _STREAMED},
        )
        del body
        sent = http_response.request
        http_response.request = httpx2.Request(sent.method, sent.url)
        return http_response


_STREAMED = {"X-Stainless-Raw-Response": "stream"}
"""Asks the SDK for the HTTP response before its body is read: what its own
``with_streaming_response`` sends (``openai._constants.RAW_RESPONSE_HEADER``)."""


def _body_chunks(http_response: httpx2.Response) -> Iterator[bytes]:
    """The body's network reads; straight from the transport unless it must be decoded.

    ``iter_bytes`` wraps the transport's stream in three more generators (bound stream,
    chunker, decoder) per read; an SSE body is almost never compressed, and when it is, they
    are needed. LeanTransport names its body stream in the response's extensions.
    """
    if _uncompressed(http_response):
        body = http_response.extensions.get(BODY_EXTENSION, http_response.stream)
        return iter(body)
    return http_response.iter_bytes()


def _uncompressed(http_response: httpx2.Response) -> bool:
    encoding = http_response.headers.get("content-encoding", "identity").strip().lower()
    return encoding in ("", "identity")


def _drain(chunks: Iterator[bytes]) -> None:
    """Read the rest of the body (normally nothing) so the connection can be pooled."""
    # gevent documents exception=False (the with block swallows its own expiry); typeshed's
    # gevent stubs do not allow it.
    with gevent.Timeout(DRAIN_SECONDS, False):  # type: ignore[arg-type]  # stubs lack False
        for _ in chunks:
            pass


class BodyPump:
    """A streamed answer's body read on its socket's readiness (the pump in
    ``axrisi.stream.generation``): the same network reads and parsing as the generator's loop,
    one non-blocking read per call."""

    __slots__ = ("fileno", "_body", "_reader")

    def __init__(self, fileno: int, body: Any, reader: _Reader) -> None:
        self.fileno = fileno
        self._body = body
        self._reader = reader

    @classmethod
    def of(cls, response: httpx2.Response, reader: _Reader) -> BodyPump | None:
        """A pump for this response, or None when its body must be read the blocking way."""
        body = response.extensions.get(BODY_EXTENSION)
        if body is None or not _uncompressed(response):
            return None
        fileno = body.pullable()
        return None if fileno is None else cls(fileno, body, reader)

    def pull(self) -> list[Pulled]:
        reader = self._reader
        try:
            data, complete = self._body.pull()
        except httpx2.TransportError:
            return [connection_failed()]
        items: list[Pulled] = []
        if data:
            items.extend(reader.feed(data))
            if reader.failure is not None:
                items.append(reader.failure)
                return items
        if complete or reader.done:
            try:
                if not reader.done:
                    items.extend(reader.feed_end())
                items.append(reader.finish())
            except ProviderError as failure:
                items.append(failure)
        return items


def connection_failed() -> ProviderError:
    """The client's sentence for a connection that failed or broke (never the address)."""
    return ProviderError("upstream_error", "The connection to the model service failed.",
                         "connection")


def _environment_proxies() -> bool:
    """True when HTTP(S)_PROXY or ALL_PROXY is set (httpx2 would route the SDK through it)."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


def status_error(status: int) -> ProviderError:
    """The client's sentence for an upstream's HTTP error status (never its body)."""
    if status == 429:
        return ProviderError("upstream_error",
                             "The model service is busy (rate limited); try again shortly.",
                             "rate_limited")
    if status in (401, 403):
        return ProviderError("upstream_error",
                             "The model service refused this server's credentials.", "auth")
    kind = "status_5xx" if status >= 500 else "status_4xx"
    return ProviderError("upstream_error", f"The model service answered with an error ({status}).",
                         kind)


Piece = str | Reasoning
"""What a network read of the answer carries: content, and the model's reasoning apart."""


class _Reader:
    """Parses the upstream's SSE body into pieces (content, reasoning) and the final Finish."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.done = False
        self.failure: ProviderError | None = None
        self._pending = b""

    def feed_end(self) -> list[Piece]:
        """The body ended without ``[DONE]``: its last line, if any, then a check it finished."""
        pieces = self.feed(b"\n") if self._pending.strip() else []
        if self.failure is None and self.finish_reason is None and not self.done:
            self.failure = ProviderError("upstream_error",
                                         "The model service ended the stream early.",
                                         "ended_early")
        if self.failure is not None and not pieces:
            raise self.failure
        return pieces

    def finish(self) -> Finish:
        """The stream's end, once the body is read; raises a failure kept by ``feed_end``."""
        if self.failure is not None:
            raise self.failure
        return Finish(reason=self.finish_reason or "stop", model=self.model, usage=self.usage)

    def feed(self, chunk: bytes) -> list[Piece]:
        """Consume one network read; return what it carried, in order: at most one content
        piece per run of content deltas (tokens that arrived together travel together), and
        the same for reasoning.

        A failure (an error event, a malformed line) is kept in ``failure`` rather than raised,
        so that the pieces before it in the same read still reach the client first.
        """
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        pieces: list[Piece] = []
        for line in lines:
            if line.startswith(b"data:") and not self.done:
                try:
                    self._on_data(line[5:].strip(), pieces)
                except ProviderError as failure:
                    self.failure = failure
                    break
        return pieces

    def _on_data(self, payload: bytes, pieces: list[Piece]) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise ProviderError("upstream_error",
                                "The model service sent a malformed response.",
                                "malformed") from None
        if not isinstance(message, dict):
            return
        if message.get("error") is not None:
            raise ProviderError("upstream_error", "The model service reported an error.",
                                "in_stream_error")
        self._on_chunk(message, pieces)

    def _on_chunk(self, message: dict[str, Any], pieces: list[Piece]) -> None:
        if isinstance(message.get("model"), str):
            self.model = message["model"]
        usage = message.get("usage")
        if isinstance(usage, dict):
            self.usage = _usage(usage)
        for choice in message.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            # DeepSeek, vLLM and llama.cpp spell it reasoning_content; OpenRouter, reasoning.
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thought, str) and thought:
                _add(pieces, Reasoning(thought))
            content = delta.get("content")
            if isinstance(content, str) and content:
                _add(pieces, content)


def _add(pieces: list[Piece], piece: Piece) -> None:
    """Append ``piece``, joined to the last one when it is of the same kind."""
    last = pieces[-1] if pieces else None
    if isinstance(piece, str):
        if isinstance(last, str):
            pieces[-1] = last + piece
            return
    elif isinstance(last, Reasoning):
        pieces[-1] = Reasoning(last.text + piece.text)
        return
    pieces.append(piece)


def _usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                 int(reasoning) if isinstance(reasoning, int) else None)
