"""Proof that the fake upstream behaves like OpenAI and observes clients faithfully.

The end-to-end tests of the relay trust what :mod:`fake_upstream` reports (tokens sent, client
hang-ups), so the fake itself is checked here with the clients that matter: the real ``openai``
SDK, ``requests`` and raw sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from tests.fake_upstream import SECRET_MARKER, FakeUpstream, RequestRecord, Scenario

pytestmark = pytest.mark.timeout(10)

AWKWARD_TOKENS = [
    "héllo",
    " 🚀🇫🇷",
    "\n",
    "\r\n",
    "data: x",
    "\n\n",
    ": comment",
    "event: fake\nid: 7\n\n",
    '"quoted" \\ back\\slash',
    "\u2028\u2029\t\x00",
    "",
    "</script>",
]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=upstream.base_url, api_key="x", max_retries=0, timeout=5)
    yield sdk
    sdk.close()


def open_stream(client: openai.OpenAI, text: str, **kwargs: Any) -> Any:
    """A real SDK stream, asking for usage like the relay does."""
    return client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    )


def contents(chunks: list[Any]) -> list[str]:
    """The content tokens of a chunk list, without the role, finish and usage chunks."""
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    return [d.content for d in deltas if d.role is None and d.content is not None]


def raw_request(upstream: FakeUpstream, body: dict[str, Any]) -> socket.socket:
    """Send one POST over a fresh raw socket and return the socket, response unread."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", upstream.port), timeout=5)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {upstream.address}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        piece = sock.recv(65536)
        if not piece:
            raise AssertionError(f"EOF before {marker!r}; got {data!r}")
        data += piece
    return data


def decode_chunked(body: bytes) -> list[bytes]:
    """Split a chunked body into its chunks, asserting it ends with the last chunk."""
    chunks = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n"
            return chunks
        chunks.append(body[:size])
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


def assert_closed_soon(record: RequestRecord, since: float) -> None:
    assert record.wait_closed(1.0), "the fake did not notice the client closing"
    assert record.closed_at is not None and record.closed_at - since < 1.0
    assert not record.completed.is_set()


# --- Streaming content ----------------------------------------------------------------------


def test_sdk_receives_tokens_in_order_exactly(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    """Awkward tokens (unicode, newlines, SSE look-alikes) reach the SDK unchanged and in order."""
    upstream.add_scenario("awkward", Scenario(tokens=AWKWARD_TOKENS))
    chunks = list(open_stream(client, "awkward please"))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert contents(chunks) == AWKWARD_TOKENS
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.model == "m" for c in chunks)
    record = upstream.wait_for_request("awkward")
    assert record.tokens_sent == len(AWKWARD_TOKENS) and record.wait_completed(1)


def test_wire_format_is_chunked_sse_one_event_per_chunk(upstream: FakeUpstream) -> None:
    """On the wire: HTTP/1.1 chunked text/event-stream, each event its own chunk, then [DONE]."""
    upstream.add_scenario("wire", Scenario(tokens=["a", "\n\n", "data: b"]))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "wire"}]}
    with raw_request(upstream, body) as sock:
        response = read_until(sock, b"\r\n0\r\n\r\n")
    head, _, chunked = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Type: text/event-stream" in head
    events = decode_chunked(chunked)
    assert all(
        e.startswith(b"data: ") and e.endswith(b"\n\n") and e.count(b"\n") == 2 for e in events
    )
    assert events[-1] == b"data: [DONE]\n\n"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert [p["choices"][0]["delta"].get("content") for p in payloads] == [
        "",
        "a",
        "\n\n",
        "data: b",
        None,
    ]
    assert "usage" not in payloads[0]  # Not asked for: no usage chunk, no "usage": null.


def test_usage_chunk_is_last_when_asked(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    """With include_usage the last chunk has no choices and prompt/completion/total counts."""
    chunks = list(open_stream(client, "three little words"))
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 4, 7)


def test_usage_chunk_can_be_withheld(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    """include_usage_chunk=False omits the usage chunk even when the request asks for it."""
    upstream.add_scenario("nousage", Scenario(include_usage_chunk=False, finish_reason="length"))
    chunks = list(open_stream(client, "nousage"))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


def test_non_stream_request_gets_a_completion(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    """A request without stream=true gets one chat.completion with the joined tokens."""
    completion = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Hello, world!"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


def test_models_endpoint_lists_one_model(client: openai.OpenAI) -> None:
    """GET /v1/models answers a list with one model."""
    assert [m.id for m in client.models.list().data] == ["fake-model"]


# --- Failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_http_error_status_surfaces_as_api_status_error(
    upstream: FakeUpstream, client: openai.OpenAI, status: int
) -> None:
    """An error scenario answers its status with an OpenAI error body carrying the secret."""
    upstream.add_scenario("fail", Scenario(status=status))
    with pytest.raises(openai.APIStatusError) as caught:
        open_stream(client, "fail now")
    assert caught.value.status_code == status
    assert SECRET_MARKER in caught.value.message and upstream.address in caught.value.message
    assert upstream.wait_for_request("fail").status == status


def test_reset_after_breaks_the_sdk_iteration(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    """reset_after aborts the connection mid-stream: iterating raises, nothing is complete."""
    upstream.add_scenario("reset", Scenario(tokens=list("abcdef"), reset_after=2))
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in open_stream(client, "reset"):
            received.append(chunk)
    assert contents(received) == ["a", "b"]
    record = upstream.wait_for_request("reset")
    assert record.wait_ended(1) and record.tokens_sent == 2
    assert not record.completed.is_set() and not record.client_closed.is_set()


def test_error_event_after_raises_api_error(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    """error_event_after sends an in-stream error event, which the SDK raises as APIError."""
    upstream.add_scenario("boom", Scenario(error_event_after=1))
    with pytest.raises(openai.APIError, match=SECRET_MARKER):
        list(open_stream(client, "boom"))
    assert upstream.wait_for_request("boom").tokens_sent == 1


# --- Noticing the client hang up --------------------------------------------------------------


def test_sdk_close_mid_stream_is_noticed(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    """Closing an SDK stream between tokens sets client_closed within a second."""
    upstream.add_scenario("long", Scenario(tokens=["t"] * 100, delay=0.05))
    stream = open_stream(client, "long")
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    closed = time.monotonic()
    stream.close()
    record = upstream.wait_for_request("long")
    assert_closed_soon(record, closed)
    assert 2 <= record.tokens_sent < 100


def test_requests_close_mid_stream_is_noticed(upstream: FakeUpstream) -> None:
    """Closing a requests stream=True response mid-stream sets client_closed within a second."""
    upstream.add_scenario("long", Scenario(tokens=["t"] * 100, delay=0.05))
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "long"}]}
    response = requests.post(
        f"{upstream.base_url}/chat/completions", json=body, stream=True, timeout=5
    )
    record = upstream.wait_for_request("long")
    assert record.wait_tokens(2, 1)
    closed = time.monotonic()
    response.close()
    assert_closed_soon(record, closed)


def test_close_during_first_token_delay_is_noticed(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    """A client leaving during first_token_delay is noticed at once, not after the delay."""
    upstream.add_scenario("think", Scenario(first_token_delay=30))
    stream = open_stream(client, "think")
    assert next(iter(stream)).choices[0].delta.role == "assistant"
    closed = time.monotonic()
    stream.close()
    record = upstream.wait_for_request("think")
    assert_closed_soon(record, closed)
    assert record.tokens_sent == 0


def test_close_while_hanging_is_noticed(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    """A client leaving a hang_after=0 stream (headers sent, then silence) is noticed at once."""
    upstream.add_scenario("hang", Scenario(hang_after=0))
    stream = open_stream(client, "hang")
    closed = time.monotonic()
    stream.close()
    assert_closed_soon(upstream.wait_for_request("hang"), closed)


def test_close_during_header_delay_is_noticed(upstream: FakeUpstream) -> None:
    """A client leaving before any response byte (header_delay) is noticed at once."""
    upstream.add_scenario("slowhead", Scenario(header_delay=30))
    sock = raw_request(
        upstream, {"model": "m", "stream": True, "messages": [{"content": "slowhead"}]}
    )
    record = upstream.wait_for_request("slowhead")
    closed = time.monotonic()
    sock.close()
    assert_closed_soon(record, closed)
    assert record.status is None


def test_completed_request_is_not_marked_closed(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    """A client closing its connection after a complete response does not set client_closed."""
    with requests.Session() as session:
        body = {"model": "m", "stream": True, "messages": [{"content": "hi"}]}
        session.post(
            f"{upstream.base_url}/chat/completions", json=body, timeout=5
        ).raise_for_status()
    list(open_stream(client, "hi"))  # The sync SDK hangs up right after reading [DONE].
    client.close()
    assert upstream.wait_open_connections(0)
    for record in upstream.requests:
        assert record.completed.is_set() and not record.client_closed.is_set()


# --- Connections ------------------------------------------------------------------------------


def test_keep_alive_serves_sequential_streams_on_one_connection(upstream: FakeUpstream) -> None:
    """Two streams read to the end over one requests.Session share one TCP connection."""
    body = {"model": "m", "stream": True, "messages": [{"content": "hi"}]}
    with requests.Session() as session:
        for _ in range(2):
            with session.post(f"{upstream.base_url}/chat/completions", json=body, stream=True) as r:
                assert b"[DONE]" in r.content
            assert upstream.open_connections() == 1
    assert {r.connection_id for r in upstream.requests} == {1}
    assert upstream.connections_accepted == 1


def test_async_sdk_streams_reuse_one_connection(upstream: FakeUpstream) -> None:
    """Two sequential AsyncOpenAI streams reuse one pooled connection (it drains after [DONE])."""

    async def two_streams() -> list[int]:
        sdk = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="x", max_retries=0)
        opened = []
        for _ in range(2):
            stream = await sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            assert [c async for c in stream]
            opened.append(upstream.open_connections())
        await sdk.close()
        return opened

    assert asyncio.run(two_streams()) == [1, 1]
    assert upstream.connections_accepted == 1


def test_sync_sdk_reuses_connections_without_leaking(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    """Sync SDK: plain calls reuse one connection; streams never leave more than one open.

    The sync ``Stream`` closes its response right after ``[DONE]`` without reading the final
    zero-length chunk, so httpcore cannot return that connection to the pool: each sync stream
    costs a new TCP connection. That is the SDK, not the fake (the async SDK drains and reuses).
    """
    for _ in range(2):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert upstream.open_connections() == 1 and upstream.connections_accepted == 1
    for _ in range(2):
        list(open_stream(client, "hi"))
        assert upstream.open_connections() <= 1
    assert upstream.wait_open_connections(0)


# --- Scenario selection and helpers -----------------------------------------------------------


def test_longest_matching_key_wins_and_wait_for_request_advances(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    """The longest matching key picks the scenario, else the default; wait_for_request hands
    out each request once, the oldest unclaimed first."""
    upstream.add_scenario("slow", Scenario(tokens=["s"]))
    upstream.add_scenario("slow-reset", Scenario(tokens=["r"]))
    parts = [{"type": "text", "text": "please be slow-reset"}]
    assert contents(list(open_stream(client, parts))) == ["r"]  # type: ignore[arg-type]
    assert contents(list(open_stream(client, "slow"))) == ["s"]
    assert contents(list(open_stream(client, "plain"))) == ["Hello", ",", " world", "!"]
    first = upstream.wait_for_request("slow-reset")
    assert first.body["messages"][0]["content"] == parts
    assert upstream.wait_for_request("slow").scenario.tokens == ["s"]
    assert upstream.wait_for_request().scenario_key is None  # key=None: any unclaimed request
    with pytest.raises(TimeoutError):
        upstream.wait_for_request(timeout=0.05)
    assert first.headers["authorization"] == "Bearer x"


def test_wait_tokens_follows_progress(upstream: FakeUpstream) -> None:
    """wait_tokens returns True once enough tokens went out, and False early if they never will."""
    upstream.add_scenario("drip", Scenario(tokens=["a", "b", "c"], delay=0.05, hang_after=2))
    with raw_request(upstream, {"model": "m", "stream": True, "messages": [{"content": "drip"}]}):
        record = upstream.wait_for_request("drip")
        assert record.wait_tokens(2, 1)
        assert not record.wait_tokens(3, 0.2)
    assert record.wait_closed(1) and not record.wait_tokens(3, 5)  # Ended: no waiting.


def test_stop_ends_hanging_handlers_and_closes_clients() -> None:
    """stop() returns promptly even with a hanging response and closes the client's socket."""
    upstream = FakeUpstream(Scenario(hang_after=1)).start()
    sock = raw_request(upstream, {"model": "m", "stream": True, "messages": [{"content": "x"}]})
    record = upstream.wait_for_request()
    assert record.wait_tokens(1, 1)
    started = time.monotonic()
    upstream.stop()
    assert time.monotonic() - started < 1.0
    assert upstream.open_connections() == 0
    sock.settimeout(1)
    read_until(sock, b"Hello")
    assert sock.recv(65536) == b""  # EOF: no terminating chunk.
    assert not record.client_closed.is_set() and not record.completed.is_set()
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", upstream.port), timeout=1)


def test_reset_forgets_requests_and_scenarios(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    """reset() clears the records, the scenarios and a replaced default."""
    upstream.add_scenario("x", Scenario(tokens=["x"]))
    upstream.default = Scenario(tokens=["d"])
    list(open_stream(client, "x"))
    upstream.reset()
    assert upstream.requests == []
    assert contents(list(open_stream(client, "x"))) == ["Hello", ",", " world", "!"]
