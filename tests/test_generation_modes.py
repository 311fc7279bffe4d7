"""A generation's modes (axrisi/stream/generation.py): the transition table, the modes every
kind of stream goes through, and what an interrupt does in each.

The pump is driven here by a scripted :class:`Pump` over a socketpair, in the main thread with no
monkey-patching: the generation's libev watcher sees the descriptor turn readable, and the pull
hands back whatever the test queued. ``tests/test_pump.py`` drives the real one.
"""

from __future__ import annotations

import gc
import itertools
import socket
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event

from axrisi.providers.base import Handover, HandsOver, Prompt, Pulled, StreamItem
from axrisi.providers.fallback import FallbackProvider
from axrisi.providers.local import LocalProvider
from axrisi.providers.openai_compat import OpenAIProvider
from axrisi.stream.eventlog import EventLog, PushWaiter
from axrisi.stream.generation import TRANSITIONS, Generation, Mode
from tests.test_generation import (
    CANCEL_MESSAGE,
    FINISH,
    PROMPT,
    STREAM_ID,
    events,
    parse_frame,
    terminal_events,
    tokens_then_block,
    tokens_then_finish,
)

# --- helpers -------------------------------------------------------------------------------


class ScriptedPump:
    """A pump whose socket the test makes readable; each pull brings what the test queued."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.fileno = self.ours.fileno()
        self.queued: list[Pulled] = []

    def send(self, *items: Pulled) -> None:
        self.queued.extend(items)
        self.theirs.send(b".")

    def pull(self) -> list[Pulled]:
        try:
            self.ours.recv(4096)
        except BlockingIOError:
            pass
        items, self.queued = self.queued, []
        return items

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


class HandingOver:
    """A provider that hands over after one piece; the rest, when the reading is handed back,
    is a Finish (after an hour's wait with ``rest_waits``, as a socket that stays silent)."""

    name = "fake"

    def __init__(self, gate: Event | None = None, rest_waits: bool = False) -> None:
        self.pump = ScriptedPump()
        self.gate = gate
        self.rest_waits = rest_waits
        self.closed = False

    def stream(self, prompt: Prompt) -> Iterator[StreamItem]:
        raise AssertionError("a provider that hands over is opened with stream_handover")

    def stream_handover(self, prompt: Prompt) -> Iterator[StreamItem]:
        try:
            yield "first"
            if self.gate is not None:
                self.gate.wait()  # the answer's headers, not in yet
            yield Handover(self.pump)
            if self.rest_waits:
                gevent.sleep(3600)
            yield FINISH
        finally:
            self.closed = True
            self.pump.close()


def kept(log: EventLog) -> list[dict[str, Any]]:
    """The events the log still keeps (the oldest may be trimmed), parsed."""
    return [parse_frame(frame) for frame in log.frames]


class Watched:
    """A generation with every mode it goes through and its end hook's calls recorded."""

    def __init__(self, provider: Any, log: EventLog | None = None,
                 on_end: Callable[[Generation], None] | None = None) -> None:
        self.provider = provider
        self.log = log if log is not None else EventLog(STREAM_ID)
        self.ended: list[Generation] = []
        self.generation = Generation(self.log, provider, PROMPT, 5.0,
                                     on_end=on_end or self.ended.append)
        self.modes = [self.generation.mode]
        become = self.generation._become

        def recording(mode: Mode) -> None:
            become(mode)
            self.modes.append(mode)

        self.generation._become = recording  # type: ignore[method-assign]

    def start(self) -> Watched:
        self.generation.start()
        return self

    def until(self, condition: Callable[[], bool], seconds: float = 2.0) -> None:
        with gevent.Timeout(seconds, False):
            while not condition():
                gevent.sleep(0.002)
        assert condition(), f"not in time; modes so far: {self.modes}"

    def until_ended(self) -> None:
        self.until(lambda: bool(self.ended))
        gevent.sleep(0.01)  # anything late would show now


def slow_hook(hook: list[str]) -> Callable[[Generation], None]:
    """An end hook that waits 50 ms, as one waiting on Redis, and says in ``hook`` whether it
    finished or what interrupted it."""

    def slow_end_hook(_: Generation) -> None:
        try:
            gevent.sleep(0.05)
        except BaseException as error:
            hook.append(f"interrupted by {error!r}")
            raise
        hook.append("done")
    return slow_end_hook


# --- the table -----------------------------------------------------------------------------


def test_every_mode_has_its_next_ones_and_only_ended_has_none() -> None:
    assert set(TRANSITIONS) == set(Mode)
    assert [mode for mode, nexts in TRANSITIONS.items() if not nexts] == [Mode.ENDED]


def test_every_mode_is_reached_from_starting_and_reaches_ended() -> None:
    def reachable(start: Mode) -> set[Mode]:
        seen, todo = {start}, [start]
        while todo:
            for mode in TRANSITIONS[todo.pop()] - seen:
                seen.add(mode)
                todo.append(mode)
        return seen

    assert reachable(Mode.STARTING) == set(Mode)
    assert all(Mode.ENDED in reachable(mode) for mode in Mode)


@pytest.mark.parametrize(("before", "after"), list(itertools.product(Mode, Mode)),
                         ids=lambda mode: mode.name)
def test_a_mode_changes_only_along_the_table(before: Mode, after: Mode) -> None:
    generation = Generation(EventLog(STREAM_ID), tokens_then_finish("a"), PROMPT, 5.0)
    generation.mode = before
    if after in TRANSITIONS[before]:
        generation._become(after)
        assert generation.mode is after
    else:
        with pytest.raises(RuntimeError, match=f"from {before.name} to {after.name}"):
            generation._become(after)
        assert generation.mode is before
    assert generation.running is (generation.mode is not Mode.ENDED)


# --- the modes each kind of stream goes through --------------------------------------------


def test_a_provider_that_cannot_hand_over_is_read_by_its_greenlet_to_the_end() -> None:
    watched = Watched(tokens_then_finish("a", "b")).start()
    watched.until_ended()
    assert watched.modes == [Mode.STARTING, Mode.READING, Mode.ENDED]
    assert watched.generation.outcome == "done"


def test_a_handover_is_read_by_the_pump_to_the_end() -> None:
    watched = Watched(HandingOver()).start()
    watched.until(lambda: watched.generation.mode is Mode.PUMPING)
    assert watched.generation.greenlet.dead  # no greenlet waits for the upstream
    watched.provider.pump.send("a", "b", FINISH)
    watched.until_ended()
    assert watched.modes == [Mode.STARTING, Mode.READING, Mode.PUMPING, Mode.ENDED]
    assert [e["data"].get("content") for e in events(watched.log)] == ["first", "a", "b", None]
    assert watched.generation.outcome == "done" and watched.provider.closed
    assert watched.ended == [watched.generation]


def test_back_pressure_hands_the_reading_back_to_a_greenlet() -> None:
    log = EventLog(STREAM_ID, max_events=2)
    cursor = log.follow(0)
    watched = Watched(HandingOver(), log).start()
    watched.until(lambda: watched.generation.mode is Mode.PUMPING)
    watched.provider.pump.send("a", "b", FINISH)  # "b" would wait: the follower is 2 behind
    watched.until(lambda: watched.generation.mode is Mode.HANDED_BACK)
    assert not watched.ended and log.next_seq == 2
    log.advance(cursor, 2)
    watched.until_ended()
    assert watched.modes == [Mode.STARTING, Mode.READING, Mode.PUMPING, Mode.HANDING_BACK,
                             Mode.HANDED_BACK, Mode.ENDED]
    assert [e["data"].get("content") for e in kept(log)] == ["b", None]  # the rest trimmed
    assert log.next_seq == 4 and watched.generation.outcome == "done"
    assert watched.provider.closed and watched.ended == [watched.generation]


# --- an interrupt in each mode -------------------------------------------------------------


def test_an_interrupt_before_the_greenlet_runs_waits_for_it() -> None:
    watched = Watched(tokens_then_block("a")).start()
    watched.generation.interrupt("cancelled", CANCEL_MESSAGE)
    assert watched.generation.mode is Mode.STARTING
    watched.until_ended()
    assert watched.modes == [Mode.STARTING, Mode.READING, Mode.ENDED]
    assert [e["data"]["code"] for e in events(watched.log)] == ["cancelled"]


def test_an_interrupt_while_pumping_ends_the_stream_in_the_caller() -> None:
    watched = Watched(HandingOver()).start()
    watched.until(lambda: watched.generation.mode is Mode.PUMPING)
    watched.generation.interrupt("cancelled", CANCEL_MESSAGE)
    assert watched.generation.mode is Mode.ENDED  # at once, no greenlet to wait for
    assert watched.provider.closed
    watched.until_ended()
    assert [e["data"].get("code") for e in terminal_events(events(watched.log))] == ["cancelled"]
    assert watched.ended == [watched.generation]


def test_an_interrupt_while_handing_back_waits_for_the_new_greenlet() -> None:
    """Between the pump's stop and its greenlet's first run, a kill would stop that greenlet
    from ever running: the stream would never end. The interrupt waits for it instead."""
    log = EventLog(STREAM_ID, max_events=2)
    cursor = log.follow(0)
    watched = Watched(HandingOver(), log).start()
    watched.until(lambda: watched.generation.mode is Mode.PUMPING)
    watched.generation._deliver(["a", "b", FINISH])  # as the watcher's callback would
    assert watched.generation.mode is Mode.HANDING_BACK
    watched.generation.interrupt("cancelled", CANCEL_MESSAGE)  # in the same turn of the hub
    log.unfollow(cursor)
    watched.until_ended()
    assert watched.modes[-2:] == [Mode.HANDED_BACK, Mode.ENDED]
    assert [e["data"].get("code") for e in terminal_events(kept(log))] == ["cancelled"]
    assert watched.provider.closed and watched.ended == [watched.generation]


def test_an_interrupt_as_the_headers_come_in_is_not_lost_to_the_pump() -> None:
    """The greenlet runs on (the headers are in) before the interrupt's throw lands: were it to
    hand over and end, the throw would find no greenlet and the stream would read on."""
    gate = Event()
    watched = Watched(HandingOver(gate=gate, rest_waits=True)).start()
    watched.until(lambda: watched.generation.content_pieces == 1)
    gate.set()  # the greenlet resumes first, the throw comes after (the hub's callbacks in order)
    watched.generation.interrupt("cancelled", CANCEL_MESSAGE)
    watched.until_ended()
    assert watched.modes == [Mode.STARTING, Mode.READING, Mode.ENDED]
    assert watched.generation.outcome == "cancelled" and watched.provider.closed


def test_a_second_interrupt_does_not_land_in_the_end_hook() -> None:
    """The first interrupt wins; a second one thrown in too would interrupt the end hook (which
    may be waiting on Redis to give the stream's slot back)."""
    hook: list[str] = []
    slow_end_hook = slow_hook(hook)

    watched = Watched(tokens_then_block("a"), on_end=slow_end_hook).start()
    watched.until(lambda: watched.generation.content_pieces == 1)
    watched.generation.interrupt("cancelled", CANCEL_MESSAGE)
    watched.generation.interrupt("shutting_down", "The server is shutting down.")
    watched.until(lambda: bool(hook))
    assert hook == ["done"]
    assert [e["data"].get("code") for e in terminal_events(events(watched.log))] == ["cancelled"]


def test_an_interrupt_that_the_answer_outruns_does_not_land_in_the_end_hook() -> None:
    """An interrupt asked for as the answer ends: its throw is queued, the greenlet writes
    ``done`` before it lands, and the end hook (which may wait on Redis) must not be where it
    lands: the hook runs in a greenlet of its own and finishes."""
    hook: list[str] = []
    box: dict[str, Generation] = {}
    slow_end_hook = slow_hook(hook)

    class Outrun:
        name = "fake"

        def stream(self, prompt: Prompt) -> Iterator[StreamItem]:
            yield "a"
            box["generation"].interrupt("cancelled", CANCEL_MESSAGE)  # queued, not landed
            yield FINISH

    watched = Watched(Outrun(), on_end=slow_end_hook)
    box["generation"] = watched.generation
    watched.start()
    watched.until(lambda: bool(hook))
    gevent.sleep(0.06)
    assert hook == ["done"] and watched.generation.outcome == "done"


@pytest.mark.parametrize("when", ["before_it_runs", "while_it_reads"])
def test_an_interrupted_generation_is_freed_without_the_cyclic_collector(when: str) -> None:
    """The interrupt it raised holds it through its traceback: kept, that would be a cycle, and
    an idle worker never runs the full collection that frees one."""
    gc.collect()
    gc.disable()
    try:
        generation = Generation(EventLog(STREAM_ID), tokens_then_block("a"), PROMPT, 5.0)
        generation.start()
        if when == "while_it_reads":
            gevent.sleep(0.02)
            assert generation.content_pieces == 1
        generation.interrupt("cancelled", CANCEL_MESSAGE)
        generation.greenlet.join(2)
        assert generation.outcome == "cancelled"
        alive = weakref.ref(generation)
        del generation
        assert alive() is None
    finally:
        gc.enable()


# --- the typed seams ------------------------------------------------------------------------


def test_only_the_openai_provider_hands_over() -> None:
    openai = OpenAIProvider("k", "http://127.0.0.1:9/v1", "m", 1)
    assert isinstance(openai, HandsOver)
    assert not isinstance(FallbackProvider(openai, openai, 1.0), HandsOver)
    assert not isinstance(LocalProvider(pace=0), HandsOver)


class Taker(PushWaiter):
    """A waiter that takes every even event itself."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: list[int] = []

    def push(self, seq: int, frame: bytes) -> bool:
        if seq % 2:
            return False
        self.taken.append(seq)
        return True


def test_a_push_waiter_is_offered_each_frame_and_woken_only_when_it_declines() -> None:
    log = EventLog(STREAM_ID)
    taker, plain = Taker(), Event()
    log._waiters.extend([taker, plain])
    log.append({"content": "0"})
    assert taker.taken == [0] and not taker.is_set() and plain.is_set()
    plain.clear()
    log.append({"content": "1"})
    assert taker.taken == [0] and taker.is_set() and plain.is_set()
    taker.clear()
    log.wake()  # no frame (the end hooks ran): everyone is woken
    assert taker.is_set()
