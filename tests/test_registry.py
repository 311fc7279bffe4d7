"""Unit tests for the registry's stream states and the one record of how a stream ended.

A fake provider (a generator driven by gevent in this thread) stands in for the model; the
e2e tests hold the same behaviour to the real gunicorn, upstream and clients.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator

import gevent
import pytest

from axrisi.commands import RunRequest
from axrisi.providers.base import Finish, Prompt, StreamItem, Usage
from axrisi.stream.ending import StreamEnd, StreamState
from axrisi.stream.ids import LocalIds
from axrisi.stream.registry import Retention, Stream, StreamRegistry

REQUEST = RunRequest(command="summarize", text="A page of text.")


class SlowProvider:
    """Yields ``pieces`` tokens ``delay`` s apart, then finishes (with usage when given)."""

    def __init__(self, pieces: int, delay: float, usage: Usage | None = None) -> None:
        self.pieces, self.delay, self.usage = pieces, delay, usage
        self.closed = False

    def stream(self, prompt: Prompt) -> Iterator[StreamItem]:
        try:
            for n in range(self.pieces):
                gevent.sleep(self.delay)
                yield f"t{n} "
            yield Finish(reason="stop", model="fake", usage=self.usage)
        finally:
            self.closed = True


def registry_with(provider: SlowProvider, grace: float = 0.0,
                  ended: list[tuple[Stream, StreamEnd]] | None = None) -> StreamRegistry:
    hooks = ended if ended is not None else []
    return StreamRegistry(provider, LocalIds(), upstream_timeout=5.0,
                          retention=Retention(grace_seconds=grace), owner_key=lambda u: u,
                          on_end=lambda stream, end: hooks.append((stream, end)))


def test_a_finished_stream_settles_with_one_end_record() -> None:
    ended: list[tuple[Stream, StreamEnd]] = []
    registry = registry_with(SlowProvider(3, 0.001, Usage(10, 3)), ended=ended)
    stream = registry.start("alice", REQUEST)
    assert stream.state is StreamState.GENERATING
    stream.generation.greenlet.join(2)
    assert stream.state is StreamState.SETTLED and stream.settled
    [(hooked, end)] = ended
    assert hooked is stream and stream.end is end
    assert (end.outcome, end.tokens_out, end.tokens_used) == ("done", 3, 13)
    assert end.first_content_at is not None and end.ended_at >= end.first_content_at


def test_without_usage_the_tokens_are_counted() -> None:
    ended: list[tuple[Stream, StreamEnd]] = []
    registry = registry_with(SlowProvider(4, 0.001), ended=ended)
    stream = registry.start("alice", REQUEST)
    stream.generation.greenlet.join(2)
    end = ended[0][1]
    assert end.tokens_out == 4
    assert end.tokens_used == 4 + -(-stream.generation.prompt_chars // 4)


def test_the_last_client_leaving_cancels_at_once_without_grace() -> None:
    provider = SlowProvider(1000, 0.01)
    registry = registry_with(provider)
    stream = registry.start("alice", REQUEST)
    registry.attach(stream)
    gevent.sleep(0.05)
    registry.detach(stream)
    stream.generation.greenlet.join(2)
    assert provider.closed and stream.settled
    assert stream.end is not None and stream.end.outcome == "cancelled"
    assert stream.end.cancel_requested_at is not None


@pytest.mark.parametrize("comes_back", [True, False])
def test_grace_keeps_generating_until_a_client_comes_back_or_it_runs_out(
        comes_back: bool) -> None:
    provider = SlowProvider(1000, 0.01)
    registry = registry_with(provider, grace=0.2)
    stream = registry.start("alice", REQUEST)
    registry.attach(stream)
    registry.detach(stream)
    assert stream.state is StreamState.IN_GRACE
    if comes_back:
        registry.attach(stream)
        assert stream.state is StreamState.GENERATING
        gevent.sleep(0.4)
        assert stream.state is StreamState.GENERATING and not provider.closed
        stream.generation.interrupt("shutting_down", "bye")
    else:
        gevent.sleep(0.4)
    stream.generation.greenlet.join(2)
    assert stream.settled and provider.closed
    assert stream.end is not None
    assert stream.end.outcome == ("shutting_down" if comes_back else "cancelled")


def dropped_in_grace(provider: SlowProvider, attached_elsewhere: Callable[[int], bool | None],
                     unsure_seconds: float) -> Stream:
    """A stream whose one client left (a 0.05 s grace), followed to its end."""
    registry = StreamRegistry(provider, LocalIds(), upstream_timeout=5.0,
                              retention=Retention(grace_seconds=0.05,
                                                  unsure_seconds=unsure_seconds),
                              owner_key=lambda u: u, attached_elsewhere=attached_elsewhere)
    stream = registry.start("alice", REQUEST)
    registry.attach(stream)
    registry.detach(stream)
    stream.generation.greenlet.join(5)
    return stream


def test_a_grace_runs_out_only_when_someone_can_tell_nobody_came_back() -> None:
    """"Cannot tell" (Redis unreachable) keeps the stream going; a reader elsewhere too; only
    a clear "nobody" ends the grace."""
    answers: list[bool | None] = [None, None, True, None, False]
    asked: list[bool | None] = []

    def attached_elsewhere(_stream_id: int) -> bool | None:
        asked.append(answers[len(asked)])
        return asked[-1]

    stream = dropped_in_grace(SlowProvider(10_000, 0.01), attached_elsewhere, 30.0)
    assert asked == answers
    assert stream.end is not None and stream.end.outcome == "cancelled"


def test_cannot_tell_goes_on_for_at_most_the_unsure_bound() -> None:
    """A worker that never sees Redis again ends its stream after ``unsure_seconds``."""
    asked: list[int] = []

    def cannot_tell(stream_id: int) -> bool | None:
        asked.append(stream_id)
        return None

    provider = SlowProvider(10_000, 0.01)
    stream = dropped_in_grace(provider, cannot_tell, 0.3)
    assert stream.end is not None and stream.end.outcome == "cancelled"
    assert len(asked) >= 3 and provider.closed


def test_finished_streams_expire_on_time_without_a_request() -> None:
    """Nothing else happens in the worker: the finished stream still goes at its TTL, its bytes
    counted for the heap trim, and no timer stays armed with nothing left to keep."""
    registry = StreamRegistry(SlowProvider(3, 0.001), LocalIds(), upstream_timeout=5.0,
                              retention=Retention(ttl_seconds=0.2), owner_key=lambda u: u)
    stream = registry.start("alice", REQUEST)
    stream.generation.greenlet.join(2)
    assert registry.lookup(stream.id) is stream
    size = stream.log.size
    assert size > 0
    with gevent.Timeout(10):
        while registry.finished:
            gevent.sleep(0.05)
    assert registry.finished_bytes == 0
    assert registry.reclaimer.dropped == size  # under the trim's threshold: counted, not trimmed
    gevent.sleep(0.01)
    assert registry._expiry is None


@pytest.mark.parametrize("ending", ["done", "cancelled", "stopped"])
def test_an_expired_stream_is_freed_without_the_cyclic_collector(ending: str) -> None:
    """An idle worker never runs a full collection: a stream in a reference cycle would keep its
    whole answer after it expired (the bench's 200 stalled readers: +100 % memory for good)."""
    registry = StreamRegistry(SlowProvider(3 if ending == "done" else 1000, 0.001), LocalIds(),
                              upstream_timeout=5.0, retention=Retention(ttl_seconds=0.05),
                              owner_key=lambda u: u)
    gc.collect()
    gc.disable()
    try:
        stream = registry.start("alice", REQUEST)
        if ending == "cancelled":
            registry.attach(stream)
            gevent.sleep(0.02)
            registry.detach(stream)
        elif ending == "stopped":
            gevent.sleep(0.02)
            assert registry.stop(stream.id)
        stream.generation.greenlet.join(2)
        assert stream.end is not None
        assert stream.end.outcome == ("done" if ending == "done" else "cancelled")
        # The stream holds its events; the generation and its greenlet, the provider's stream.
        alive = [weakref.ref(stream), weakref.ref(stream.generation),
                 weakref.ref(stream.generation.greenlet)]
        del stream
        with gevent.Timeout(5):
            while registry.finished:
                gevent.sleep(0.02)
        gevent.sleep(0.01)
        assert [ref() for ref in alive] == [None, None, None]
    finally:
        gc.enable()
