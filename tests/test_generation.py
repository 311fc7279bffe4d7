"""Unit tests for a stream's event log and generation (axrisi/stream/eventlog.py, generation.py).

The providers here are tiny fakes driven by gevent in the main thread (no monkey-patching): each
records whether its generator's ``finally`` ran, which is how a real provider closes its upstream.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event

from axrisi.providers.base import Finish, Prompt, ProviderError, StreamItem, Usage
from axrisi.stream import sse
from axrisi.stream.eventlog import EventLog
from axrisi.stream.generation import Generation

STREAM_ID = 1749186088941
PROMPT = Prompt(command="summarize", system="sys", user="<text>\nhi\n</text>", text="hi")
FINISH = Finish(reason="stop", model="fake-model",
                usage=Usage(prompt_tokens=3, completion_tokens=2))
CANCEL_MESSAGE = "The stream was cancelled because its client left."


# --- helpers -------------------------------------------------------------------------------


def parse_frame(frame: bytes) -> dict[str, Any]:
    """One SSE frame as {"id", "event", "data"}, read the way a browser reads it."""
    lines = re.split(r"\r\n|\r|\n", frame.decode("utf-8"))
    assert lines[-2:] == ["", ""], frame
    fields: dict[str, Any] = {"event": "message"}
    data_lines = []
    for line in lines[:-2]:
        assert line, f"blank line inside a frame: {frame!r}"
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data_lines.append(value)
        else:
            assert name not in fields or name == "event", frame
            fields[name] = value
    assert len(data_lines) == 1, frame
    fields["data"] = json.loads(data_lines[0])
    return fields


def events(log: EventLog) -> list[dict[str, Any]]:
    """Every frame of the log, parsed."""
    return [parse_frame(frame) for frame in log.read(0)]


def terminal_events(parsed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The done and error events among ``parsed``."""
    return [e for e in parsed if e["event"] == "error" or e["data"].get("done") is True]


def assert_ids_increase(parsed: list[dict[str, Any]], stream_id: int = STREAM_ID) -> None:
    """Ids are ``<streamId>-<n>`` with n = 0, 1, 2, ... in order."""
    ids = [e["id"] for e in parsed]
    assert all(i.rsplit("-", 1)[0] == str(stream_id) for i in ids), ids
    assert [int(i.rsplit("-", 1)[1]) for i in ids] == list(range(len(ids)))


class Recorder:
    """What a fake provider saw: whether it started and whether its ``finally`` ran."""

    def __init__(self) -> None:
        self.started = False
        self.closed = False
        self.closed_at: float | None = None

    def close(self) -> None:
        self.closed = True
        self.closed_at = time.monotonic()


class FakeProvider:
    """A provider whose stream is the generator ``script(recorder)``, wrapped in try/finally."""

    name = "fake"

    def __init__(self, script: Any) -> None:
        self.script = script
        self.recorder = Recorder()
        self.calls = 0

    def stream(self, prompt: Prompt) -> Iterator[StreamItem]:
        self.calls += 1
        assert prompt is PROMPT
        self.recorder.started = True
        try:
            yield from self.script()
        finally:
            self.recorder.close()


def tokens_then_finish(*pieces: str, delay: float = 0.0,
                       finish: Finish = FINISH) -> FakeProvider:
    """A provider that yields ``pieces`` (``delay`` apart), then ``finish``."""
    def script() -> Iterator[StreamItem]:
        for piece in pieces:
            if delay:
                gevent.sleep(delay)
            yield piece
        yield finish
    return FakeProvider(script)


def tokens_then_raise(error: BaseException, *pieces: str) -> FakeProvider:
    """A provider that yields ``pieces`` then raises ``error``."""
    def script() -> Iterator[StreamItem]:
        yield from pieces
        raise error
    return FakeProvider(script)


def tokens_then_block(*pieces: str) -> FakeProvider:
    """A provider that yields ``pieces`` then waits on the upstream forever."""
    def script() -> Iterator[StreamItem]:
        yield from pieces
        gevent.sleep(3600)
        yield "never"
    return FakeProvider(script)


class Run:
    """A Generation on a fresh log, with its on_end calls recorded."""

    def __init__(self, provider: Any, upstream_timeout: float = 5.0,
                 stream_id: int = STREAM_ID) -> None:
        self.provider = provider
        self.log = EventLog(stream_id)
        self.ended: list[Generation] = []
        self.closed_before_on_end: bool | None = None
        self.generation = Generation(self.log, provider, PROMPT, upstream_timeout,
                                     on_end=self._on_end)

    def _on_end(self, generation: Generation) -> None:
        self.ended.append(generation)
        recorder = getattr(self.provider, "recorder", None)
        if recorder is not None:
            self.closed_before_on_end = recorder.closed

    def start(self) -> Run:
        self.generation.start()
        return self

    def join(self, timeout: float = 2.0) -> Run:
        self.generation.greenlet.join(timeout)
        assert self.generation.greenlet.dead, "the generation did not end in time"
        return self


def run_to_end(provider: Any, upstream_timeout: float = 5.0) -> Run:
    """Start a generation and wait for its greenlet to end."""
    return Run(provider, upstream_timeout).start().join()


def wait_until_blocked(run: Run) -> None:
    """Let the generation greenlet run until the provider is blocked inside its stream."""
    deadline = time.monotonic() + 1.0
    while not run.provider.recorder.started and time.monotonic() < deadline:
        gevent.sleep(0.005)
    gevent.sleep(0.02)
    assert run.provider.recorder.started and not run.generation.greenlet.dead


# --- Generation: success -------------------------------------------------------------------


def test_content_events_then_one_done() -> None:
    """Pieces become content events in order, then exactly one done event ends the log."""
    run = run_to_end(tokens_then_finish("##", " Overview", "\n\n- point"))
    parsed = events(run.log)
    assert [e["data"] for e in parsed] == [
        {"content": "##", "commandId": STREAM_ID},
        {"content": " Overview", "commandId": STREAM_ID},
        {"content": "\n\n- point", "commandId": STREAM_ID},
        {"done": True, "commandId": STREAM_ID, "finishReason": "stop", "model": "fake-model",
         "usage": {"promptTokens": 3, "completionTokens": 2}},
    ]
    assert [e["event"] for e in parsed] == ["message"] * 4
    assert len(terminal_events(parsed)) == 1
    assert_ids_increase(parsed)
    assert run.log.ended is True
    assert run.generation.outcome == "done"
    assert run.generation.running is False
    assert run.generation.finish == FINISH
    assert run.generation.content_pieces == 3
    assert run.provider.recorder.closed is True
    assert run.closed_before_on_end is True
    assert run.ended == [run.generation]


def test_provider_is_closed_before_on_end() -> None:
    """The provider's iterator is closed (its finally ran) before on_end is called."""
    provider = tokens_then_finish("a")
    run = Run(provider)
    kept: list[Any] = []
    original = provider.stream

    def stream_keeping_a_reference(prompt: Prompt) -> Iterator[StreamItem]:
        items = original(prompt)
        kept.append(items)  # so garbage collection cannot close it for the generation
        return items

    provider.stream = stream_keeping_a_reference  # type: ignore[method-assign]
    run.start().join()
    assert run.closed_before_on_end is True
    assert run.ended == [run.generation]


def test_ids_continue_after_an_existing_title_event() -> None:
    """With the title event already in the log, content ids continue at 1 and keep increasing."""
    run = Run(tokens_then_finish("a", "b"))
    run.log.append({"title": "Summary", "commandId": STREAM_ID})
    run.start().join()
    parsed = events(run.log)
    assert [e["id"] for e in parsed] == [f"{STREAM_ID}-{n}" for n in range(4)]
    assert parsed[0]["data"] == {"title": "Summary", "commandId": STREAM_ID}
    assert "".join(e["data"].get("content", "") for e in parsed) == "ab"


def test_done_without_usage_has_no_usage_field() -> None:
    """A Finish without usage gives a done event without a usage field."""
    run = run_to_end(tokens_then_finish("x", finish=Finish(reason="length", model="m")))
    assert events(run.log)[-1]["data"] == {"done": True, "commandId": STREAM_ID,
                                           "finishReason": "length", "model": "m"}


def test_content_is_preserved_exactly() -> None:
    """Content events carry the provider's pieces exactly: unicode, newlines, SSE lookalikes."""
    pieces = ["h\u00e9", "\U0001f600", "\n\ndata: x\n\n", "\r", "id: 9", " end"]
    run = run_to_end(tokens_then_finish(*pieces))
    parsed = events(run.log)
    assert [e["data"]["content"] for e in parsed[:-1]] == pieces
    assert_ids_increase(parsed)


def test_stream_ending_without_finish_is_upstream_error() -> None:
    """A provider that stops without a Finish ends with one upstream_error event."""
    def script() -> Iterator[StreamItem]:
        yield "partial"
    run = run_to_end(FakeProvider(script))
    parsed = events(run.log)
    assert parsed[0]["data"] == {"content": "partial", "commandId": STREAM_ID}
    assert parsed[-1]["event"] == "error"
    assert parsed[-1]["data"]["code"] == "upstream_error"
    assert parsed[-1]["data"]["commandId"] == STREAM_ID
    assert len(terminal_events(parsed)) == 1
    assert run.provider.recorder.closed is True
    assert run.ended == [run.generation]


# --- Generation: errors --------------------------------------------------------------------


@pytest.mark.parametrize("code", ["upstream_error", "upstream_timeout", "quota_exceeded"])
def test_provider_error_becomes_one_error_event(code: str) -> None:
    """A ProviderError ends the stream with one `event: error` frame carrying its code."""
    run = run_to_end(tokens_then_raise(ProviderError(code, "The model service failed."), "a"))
    parsed = events(run.log)
    assert parsed == [
        {"id": f"{STREAM_ID}-0", "event": "message",
         "data": {"content": "a", "commandId": STREAM_ID}},
        {"id": f"{STREAM_ID}-1", "event": "error",
         "data": {"error": "The model service failed.", "code": code, "commandId": STREAM_ID}},
    ]
    assert run.log.frames[-1].startswith(f"id: {STREAM_ID}-1\nevent: error\ndata: ".encode())
    assert run.generation.outcome == code
    assert run.provider.recorder.closed is True
    assert run.ended == [run.generation]


def test_unexpected_exception_is_internal_without_its_text() -> None:
    """Any other exception ends with `internal` and a sentence holding none of its text."""
    secret = "sk-live-0123456789 at http://10.1.2.3:8080/v1 Traceback (most recent call last)"
    run = run_to_end(tokens_then_raise(RuntimeError(secret), "a"))
    parsed = events(run.log)
    assert len(terminal_events(parsed)) == 1
    last = parsed[-1]
    assert last["event"] == "error"
    assert set(last["data"]) == {"error", "code", "commandId"}
    assert last["data"]["code"] == "internal"
    assert last["data"]["commandId"] == STREAM_ID
    sentence = last["data"]["error"]
    assert sentence and sentence[0].isupper() and sentence.endswith(".")
    raw = run.log.frames[-1].decode()
    for leak in ("sk-live", "10.1.2.3", "Traceback", "RuntimeError", "http://"):
        assert leak not in raw
    assert run.generation.outcome == "internal"
    assert run.provider.recorder.closed is True
    assert run.ended == [run.generation]


# --- Generation: interruption and timeouts -------------------------------------------------


@pytest.mark.parametrize("code", ["cancelled", "shutting_down"])
def test_interrupt_ends_a_blocked_provider_promptly(code: str) -> None:
    """interrupt() on a provider blocked in gevent.sleep ends it with that code and runs finally."""
    run = Run(tokens_then_block("first")).start()
    wait_until_blocked(run)
    started = time.monotonic()
    run.generation.interrupt(code, CANCEL_MESSAGE)
    run.join(1.0)
    assert time.monotonic() - started < 0.5
    parsed = events(run.log)
    assert parsed[-1] == {"id": f"{STREAM_ID}-1", "event": "error",
                          "data": {"error": CANCEL_MESSAGE, "code": code,
                                   "commandId": STREAM_ID}}
    assert len(terminal_events(parsed)) == 1
    assert run.provider.recorder.closed is True
    assert run.provider.recorder.closed_at is not None
    assert run.provider.recorder.closed_at - started < 0.5
    assert run.generation.outcome == code
    assert run.ended == [run.generation]


def test_interrupt_before_any_token() -> None:
    """interrupt() while the provider has sent nothing yet still ends with one error event."""
    run = Run(tokens_then_block()).start()
    wait_until_blocked(run)
    run.generation.interrupt("cancelled", CANCEL_MESSAGE)
    run.join(1.0)
    parsed = events(run.log)
    assert [e["data"]["code"] for e in parsed] == ["cancelled"]
    assert run.provider.recorder.closed is True
    assert run.ended == [run.generation]


def test_interrupt_twice_writes_one_terminal_event() -> None:
    """A second interrupt (or one after the end) adds nothing and on_end stays at one call."""
    run = Run(tokens_then_block("a")).start()
    wait_until_blocked(run)
    run.generation.interrupt("cancelled", CANCEL_MESSAGE)
    run.generation.interrupt("shutting_down", "The server is shutting down.")
    run.join(1.0)
    run.generation.interrupt("shutting_down", "The server is shutting down.")
    gevent.sleep(0.02)
    parsed = events(run.log)
    assert len(terminal_events(parsed)) == 1
    assert parsed[-1]["data"]["code"] == "cancelled"
    assert run.ended == [run.generation]


def test_interrupt_after_done_is_a_no_op() -> None:
    """interrupt() after the done event changes nothing."""
    run = run_to_end(tokens_then_finish("a"))
    frames = list(run.log.frames)
    run.generation.interrupt("cancelled", CANCEL_MESSAGE)
    gevent.sleep(0.02)
    assert run.log.frames == frames
    assert run.generation.outcome == "done"
    assert run.ended == [run.generation]


def test_plain_kill_ends_as_cancelled() -> None:
    """Killing the greenlet with GreenletExit ends the stream with a cancelled event."""
    run = Run(tokens_then_block("a")).start()
    wait_until_blocked(run)
    run.generation.greenlet.kill(block=True, timeout=1.0)
    parsed = events(run.log)
    assert parsed[-1]["event"] == "error"
    assert parsed[-1]["data"]["code"] == "cancelled"
    assert len(terminal_events(parsed)) == 1
    assert run.provider.recorder.closed is True
    assert run.ended == [run.generation]


def test_interrupt_right_after_start_still_ends_the_stream() -> None:
    """interrupt() straight after start() still writes one error event and calls on_end."""
    run = Run(tokens_then_block("a")).start()
    run.generation.interrupt("shutting_down", "The server is shutting down.")
    gevent.sleep(0.1)
    parsed = events(run.log)
    assert [e["data"].get("code") for e in terminal_events(parsed)] == ["shutting_down"]
    assert run.log.ended is True
    assert run.ended == [run.generation]


def test_provider_raising_on_call_still_ends_the_stream() -> None:
    """A provider whose stream() raises at once still ends the stream with one error event."""
    class EagerProvider:
        name = "eager"

        def stream(self, prompt: Prompt) -> Iterator[StreamItem]:
            raise ProviderError("upstream_error", "The connection to the model service failed.")

    run = Run(EagerProvider()).start()
    run.generation.greenlet.join(1.0)
    parsed = events(run.log)
    assert [e["data"].get("code") for e in terminal_events(parsed)] == ["upstream_error"]
    assert run.ended == [run.generation]


def test_silence_past_upstream_timeout_is_upstream_timeout() -> None:
    """An upstream silent past upstream_timeout ends with upstream_timeout and runs finally."""
    gevent.get_hub().loop.update_now()  # timers count from libev's cached time: refresh it
    started = time.monotonic()
    run = run_to_end(tokens_then_block("a"), upstream_timeout=0.2)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 1.0
    parsed = events(run.log)
    assert parsed[0]["data"] == {"content": "a", "commandId": STREAM_ID}
    assert parsed[-1]["event"] == "error"
    assert parsed[-1]["data"]["code"] == "upstream_timeout"
    assert parsed[-1]["data"]["commandId"] == STREAM_ID
    assert len(terminal_events(parsed)) == 1
    assert run.generation.outcome == "upstream_timeout"
    assert run.provider.recorder.closed is True
    assert run.ended == [run.generation]


def test_silence_from_the_start_is_upstream_timeout() -> None:
    """An upstream that never sends anything times out the same way."""
    run = run_to_end(tokens_then_block(), upstream_timeout=0.2)
    parsed = events(run.log)
    assert [e["data"]["code"] for e in parsed] == ["upstream_timeout"]
    assert run.provider.recorder.closed is True
    assert run.ended == [run.generation]


def test_slow_but_steady_provider_does_not_time_out() -> None:
    """Tokens every 0.05 s for 0.5 s never trip a 0.2 s silence timeout."""
    pieces = [f"t{n} " for n in range(10)]
    started = time.monotonic()
    run = run_to_end(tokens_then_finish(*pieces, delay=0.05), upstream_timeout=0.2)
    assert time.monotonic() - started >= 0.45
    parsed = events(run.log)
    assert [e["data"].get("content") for e in parsed[:-1]] == pieces
    assert parsed[-1]["data"]["done"] is True
    assert run.generation.outcome == "done"
    assert run.ended == [run.generation]


def test_timer_is_released_after_the_end() -> None:
    """After a stream ends, no late silence timeout adds anything to the log."""
    run = run_to_end(tokens_then_finish("a"), upstream_timeout=0.05)
    frames = list(run.log.frames)
    gevent.sleep(0.15)
    assert run.log.frames == frames
    assert run.ended == [run.generation]


# --- EventLog ------------------------------------------------------------------------------


def test_append_assigns_ids_and_encodes_frames() -> None:
    """append() numbers events <streamId>-0, -1, ... and stores their SSE frames."""
    log = EventLog(42)
    log.append({"title": "T", "commandId": 42})
    log.append({"content": "x", "commandId": 42})
    log.append({"error": "E.", "code": "internal", "commandId": 42}, name="error", final=True)
    assert log.next_seq == 3
    assert log.frames == [
        sse.event("42-0", {"title": "T", "commandId": 42}),
        sse.event("42-1", {"content": "x", "commandId": 42}),
        sse.event("42-2", {"error": "E.", "code": "internal", "commandId": 42}, "error"),
    ]
    assert log.ended is True


def test_read_from_a_position() -> None:
    """read(p) returns the frames from p on, and nothing at or past the end."""
    log = EventLog(1)
    for n in range(3):
        log.append({"n": n})
    assert log.read(0) == log.frames
    assert log.read(2) == [log.frames[2]]
    assert log.read(3) == []
    assert log.read(10) == []


def test_nothing_is_appended_after_the_final_event() -> None:
    """Once a final event is in, further appends are ignored."""
    log = EventLog(1)
    log.append({"content": "a"})
    log.append({"done": True}, final=True)
    frames = list(log.frames)
    log.append({"content": "late"})
    log.append({"error": "x", "code": "internal"}, name="error", final=True)
    assert log.frames == frames
    assert log.next_seq == 2
    assert log.ended is True


def test_wait_returns_at_once_when_behind() -> None:
    """wait() returns True at once when a frame is already there."""
    log = EventLog(1)
    log.append({"n": 0})
    started = time.monotonic()
    assert log.wait(0, Event(), timeout=5) is True
    assert time.monotonic() - started < 0.05


def test_wait_returns_at_once_when_ended() -> None:
    """wait() at the end of an ended log returns True at once."""
    log = EventLog(1)
    log.append({"done": True}, final=True)
    started = time.monotonic()
    assert log.wait(1, Event(), timeout=5) is True
    assert time.monotonic() - started < 0.05


def test_wait_wakes_on_append() -> None:
    """wait() blocks until another greenlet appends, then returns True."""
    log = EventLog(1)
    appended_at: list[float] = []

    def append() -> None:
        appended_at.append(time.monotonic())
        log.append({"content": "hi"})

    # Not a lower bound on the elapsed time: libev's timers count from the loop's cached time,
    # which lags after a stretch without yielding, so spawn_later(0.05) may fire sooner in real
    # time. What matters: wait() returned after the append, and promptly.
    gevent.spawn_later(0.05, append)
    assert log.wait(0, Event(), timeout=2) is True
    returned = time.monotonic()
    assert appended_at and appended_at[0] <= returned < appended_at[0] + 0.5
    assert [parse_frame(f)["data"] for f in log.read(0)] == [{"content": "hi"}]


def test_wait_wakes_every_waiter() -> None:
    """One append wakes all the followers waiting at the end."""
    log = EventLog(1)
    results: list[bool] = []
    waiters = [gevent.spawn(lambda: results.append(log.wait(0, Event(), timeout=2)))
               for _ in range(3)]
    gevent.sleep(0.02)
    log.append({"content": "x"})
    gevent.joinall(waiters, timeout=1)
    assert results == [True, True, True]


def test_wait_wakes_on_final_event() -> None:
    """A follower waiting at the end wakes when the final event arrives."""
    log = EventLog(1)
    log.append({"content": "a"})
    gevent.spawn_later(0.03, log.append, {"done": True}, None, True)
    assert log.wait(1, Event(), timeout=2) is True
    assert log.ended is True
    assert len(log.read(1)) == 1


def test_wait_times_out() -> None:
    """wait() with nothing appended returns False after the timeout."""
    log = EventLog(1)
    gevent.get_hub().loop.update_now()  # timers count from libev's cached time: refresh it
    started = time.monotonic()
    assert log.wait(0, Event(), timeout=0.1) is False
    elapsed = time.monotonic() - started
    assert 0.08 <= elapsed < 0.5


def test_waiter_can_be_reused_after_timeout() -> None:
    """A waiter that timed out waits again (it was cleared) and then wakes on append."""
    log = EventLog(1)
    waiter = Event()
    assert log.wait(0, waiter, timeout=0.02) is False
    gevent.spawn_later(0.03, log.append, {"n": 0})
    assert log.wait(0, waiter, timeout=2) is True
    waiter.set()  # a stale set must not make the next wait return early
    started = time.monotonic()
    assert log.wait(1, waiter, timeout=0.05) is False
    assert time.monotonic() - started >= 0.04
