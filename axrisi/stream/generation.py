"""A stream's generation: what reads the provider and writes the event log.

It owns the upstream request. Every way it can end writes exactly one terminal event and then
closes the provider's iterator, which closes the upstream HTTP connection:

* the provider finishes → ``done``;
* the provider raises :class:`ProviderError` → ``error`` with its sanitized sentence;
* it is interrupted (:meth:`Generation.interrupt`) because the client left, the upstream was
  silent too long, or the worker is shutting down → ``error`` with that code;
* anything else is a bug → logged with its stack trace server-side, ``internal`` to the client.

The silence watchdog is one libev timer per stream, re-armed lazily: the per-token cost is a
timestamp store, not a timer restart.

Once the answer's headers are in, a provider that can (a ``HandsOver``: the OpenAI provider,
plain or TLS, through LeanTransport) hands its socket over and the rest is read by a libev
watcher's callback, the pump: no greenlet waits per stream, so no switch per token and no saved
stack per open stream (``docs/benchmarks.md``: 41 to 28 KB per held stream). A fallback
upstream, compressed bodies, the urllib3 transport and the local providers keep the greenlet.

Who reads is the generation's :class:`Mode`. It changes only through ``Generation._become``,
along :data:`TRANSITIONS`:

    STARTING ──its greenlet runs──▶ READING ──Handover──▶ PUMPING ──back pressure──▶ HANDING_BACK
                                      │                     │                            │
                                      │                     │          its greenlet runs │
                                      │                     │                            ▼
                                      │                     │                       HANDED_BACK
                                      ▼                     │                            │
                                    ENDED ◀─────────────────┴────────────────────────────┘
                 (the terminal event written, once: the end, a failure or an interrupt)

The pump takes over at a :class:`Handover` (the headers are in); back pressure (an append that
would wait for a follower, which a hub callback must not) hands the reading back to a greenlet.
An interrupt acts by mode (:meth:`Generation.interrupt`): kept for a greenlet that has not run
yet, thrown into one that runs, carried out at once in the caller while the pump reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any

import gevent
from gevent import Greenlet, GreenletExit

from ..providers.base import (
    Finish,
    Handover,
    HandsOver,
    Prompt,
    Provider,
    ProviderError,
    Pulled,
    Pump,
    Reasoning,
    StreamItem,
    Switched,
)
from .eventlog import EventLog

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "Something went wrong on our side; please try again."


class Interrupted(GreenletExit):
    """Thrown into a generation to stop it; carries the terminal event's code and sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Mode(Enum):
    """Who reads a generation's answer, or that it has ended (see :data:`TRANSITIONS`)."""

    STARTING = "starting"
    """Its greenlet is made, maybe started, but has not run: an interrupt is kept for it to
    raise when it runs (killing a greenlet that never ran would stop it from ever running, and
    the stream would never get its terminal event)."""
    READING = "reading"
    """A greenlet reads the provider's iterator, blocked wherever the provider waits: every
    answer until its headers are in, and all of it from a provider that cannot hand over. An
    interrupt is thrown in; until it lands, a Handover is not taken (the greenlet would be gone,
    the interrupt lost)."""
    PUMPING = "pumping"
    """No greenlet: a libev io watcher's callback reads the upstream's socket when it turns
    readable (the pump)."""
    HANDING_BACK = "handing_back"
    """An append in the pump would have waited for a follower (back pressure): the watcher is
    stopped and a new greenlet is started but has not run (an interrupt waits, as in
    ``STARTING``)."""
    HANDED_BACK = "handed_back"
    """That greenlet appends what the pump pulled, waiting for room, then reads the rest of the
    answer the blocking way, through the provider's iterator."""
    ENDED = "ended"
    """The terminal event is written; the upstream is closed and the end hook called, once."""


TRANSITIONS: dict[Mode, frozenset[Mode]] = {
    Mode.STARTING: frozenset({Mode.READING}),
    Mode.READING: frozenset({Mode.PUMPING, Mode.ENDED}),
    Mode.PUMPING: frozenset({Mode.HANDING_BACK, Mode.ENDED}),
    Mode.HANDING_BACK: frozenset({Mode.HANDED_BACK}),
    Mode.HANDED_BACK: frozenset({Mode.ENDED}),
    Mode.ENDED: frozenset(),
}
"""Each mode's possible next ones. A greenlet that has not run cannot end (its interrupt waits
for it), and a greenlet handed the reading back never hands it over again (the provider's
iterator gives one Handover at most)."""


class Generation:
    """Drives one provider stream into one event log: in a greenlet, or in the pump."""

    def __init__(self, log_: EventLog, provider: Provider, prompt: Prompt,
                 upstream_timeout: float,
                 on_end: Callable[[Generation], None] | None = None,
                 reasoning: bool = False) -> None:
        self.log = log_
        self.provider = provider
        # The prompt holds the page's text (up to AXRISI_MAX_TEXT_CHARS): it is handed to the
        # provider when the generation starts and not kept, only its size (for tokens_used).
        self.prompt: Prompt | None = prompt
        self.prompt_chars = len(prompt.system) + len(prompt.user)
        self.upstream_timeout = upstream_timeout
        self.on_end = on_end
        self.outcome: str | None = None
        self.error_kind: str | None = None
        self.finish: Finish | None = None
        self.content_pieces = 0
        self.reasoning = reasoning
        """Relay the model's reasoning as ``reasoning`` events (the request's ``reasoning``);
        without it, reasoning only keeps the silence watch quiet."""
        self.reasoning_pieces = 0
        self.fallback_reason: str | None = None
        """Why the primary upstream was skipped for the fallback, when it was."""
        self.first_content_at: float | None = None
        self.started_at = time.monotonic()
        self.last_activity = self.started_at
        self.mode = Mode.STARTING
        """Who reads now; changed by :meth:`_become` only."""
        self._timer: Any = None
        self._pending: Interrupted | None = None
        """An interrupt on its way: kept for a greenlet that has not run yet (``STARTING``,
        ``HANDING_BACK``), which raises it first thing, or thrown into a running one, which must
        not hand the reading over to the pump before it lands."""
        self._items: Iterator[StreamItem] | None = None
        self._pump: Pump | None = None
        """The pump, set exactly while the mode is ``PUMPING`` (``_take_over`` sets it,
        ``_stop_watching`` clears it)."""
        self._watcher: Any = None
        self._rest: list[Pulled] = []
        self.greenlet: Greenlet[[], None] = Greenlet(self._run)

    @property
    def running(self) -> bool:
        """True until the terminal event is written."""
        return self.mode is not Mode.ENDED

    def start(self) -> None:
        """Start reading the provider; the upstream request begins at once."""
        self._arm(self.upstream_timeout)
        self.greenlet.start()

    def interrupt(self, code: str, message: str) -> None:
        """Stop the generation with a terminal error event; the upstream is closed promptly.

        How depends on the mode: the pump (``PUMPING``) is stopped here and now; a greenlet
        that has not run yet (``STARTING``, ``HANDING_BACK``) raises the interrupt when it runs;
        a running one (``READING``, ``HANDED_BACK``) has it thrown in wherever it waits, at the
        hub's next turn. Once ``ENDED``, or with an interrupt on its way, nothing happens: the
        first one wins (a second one thrown in would land in the end hook).
        """
        mode = self.mode
        if mode is Mode.ENDED or self._pending is not None:
            return
        stop = Interrupted(code, message)
        if mode is Mode.PUMPING:
            self._interrupted(stop)
            self._wind_down()
            return
        self._pending = stop
        if (mode is Mode.READING or mode is Mode.HANDED_BACK) and not self.greenlet.dead:
            self.greenlet.kill(stop, block=False)

    def _become(self, mode: Mode) -> None:
        """Every change of mode passes here, so that :data:`TRANSITIONS` is the whole state
        machine; never on the per-token path."""
        if mode not in TRANSITIONS[self.mode]:
            raise RuntimeError(f"a generation cannot go from {self.mode.name} to {mode.name}")
        self.mode = mode

    def _run(self) -> None:
        self._guarded(Mode.READING, self._read)

    def _read(self) -> None:
        prompt, self.prompt = self.prompt, None
        assert prompt is not None
        # A provider that can hand its socket over (``Handover``) is read without a greenlet
        # waiting per stream once its answer's headers are in: see ``_take_over``.
        provider = self.provider
        if isinstance(provider, HandsOver):
            self._items = provider.stream_handover(prompt)
        else:
            self._items = provider.stream(prompt)
        del prompt
        self._relay(self._items)

    def _guarded(self, mode: Mode, body: Callable[[], None]) -> None:
        """Run ``body`` in this greenlet, which has just started, as ``mode``; every way it ends
        writes the terminal event, and, unless the pump reads on, closes the provider's iterator
        and calls the end hook."""
        self._become(mode)
        landed = False
        try:
            if self._pending is not None:
                raise self._pending
            body()
        except Interrupted as stop:
            landed = True
            self._interrupted(stop)
        except GreenletExit:
            landed = True
            self._end("cancelled", {"error": "The stream was cancelled.", "code": "cancelled"})
            raise
        except ProviderError as error:
            self._fail(error)
        except Exception:
            log.exception("generation failed")
            self._end("internal", {"error": INTERNAL_MESSAGE, "code": "internal"})
        finally:
            # Let go of a raised interrupt: through its traceback it holds this generation, and
            # a cycle would keep the stream's whole answer until a full collection.
            on_its_way = self._pending is not None and not landed
            self._pending = None
            if self.mode is not Mode.PUMPING:
                self._disarm()
                self._close_items()
                if on_its_way:
                    # The answer outran an interrupt whose throw is still queued for this
                    # greenlet: the throw must find it dead, not in the end hook.
                    self._end_hook_apart()
                else:
                    self._call_on_end()

    def _relay(self, items: Iterator[StreamItem]) -> None:
        """The per-token loop: keep it to a timestamp, one append and nothing else."""
        append = self.log.append
        command_id = self.log.stream_id
        for item in items:
            self.last_activity = time.monotonic()
            if isinstance(item, str):
                if self.first_content_at is None:
                    self.first_content_at = self.last_activity
                self.content_pieces += 1
                append({"content": item, "commandId": command_id})
            elif isinstance(item, Reasoning):
                self._reasoned(item)
            elif isinstance(item, Switched):  # the fallback upstream takes over (no event)
                self.fallback_reason = item.reason
            elif isinstance(item, Handover):
                if self._pending is None:  # else an interrupt's throw is on its way: read on
                    self._take_over(item.pump)
                    return
            else:
                self._finished(item)
                return
        raise ProviderError("upstream_error", "The model service ended the stream early.",
                            "ended_early")

    # --- the pump: the answer read on its socket's readiness, in the hub

    def _take_over(self, pump: Pump) -> None:
        """Read the rest of the answer in a libev watcher's callback, and let this greenlet end.

        A greenlet blocked on the upstream's socket costs a switch in and out of it for every
        token and a saved stack for every open stream; a watcher costs neither. The callback
        never blocks: an append that would wait (a follower a whole cap behind) hands the
        reading back to a greenlet (``_hand_back``), and the end hooks, which may wait on Redis,
        run in a greenlet of their own.
        """
        self._become(Mode.PUMPING)
        self._pump = pump
        loop = gevent.get_hub().loop
        self._watcher = loop.io(pump.fileno, 1)
        self._watcher.start(self._on_readable)
        loop.run_callback(self._on_readable)  # what came in with the headers, if anything

    def _on_readable(self) -> None:
        pump = self._pump
        if pump is None:  # not PUMPING any more: a callback queued before the pump stopped
            return
        try:
            self._deliver(pump.pull())
        except Exception:  # a hub callback must not raise
            log.exception("generation failed")
            self._end("internal", {"error": INTERNAL_MESSAGE, "code": "internal"})
            self._wind_down()

    def _deliver(self, pulled: list[Pulled]) -> None:
        log_ = self.log
        for index, item in enumerate(pulled):
            self.last_activity = time.monotonic()
            if isinstance(item, str | Reasoning):
                if log_.must_wait():
                    self._hand_back(pulled[index:])
                    return
                if isinstance(item, str):
                    self._content(item)
                else:
                    self._reasoned(item)
            else:
                if isinstance(item, ProviderError):
                    self._fail(item)
                else:
                    self._finished(item)
                self._wind_down()
                return

    def _hand_back(self, rest: list[Pulled]) -> None:
        """Back pressure: the pump stops and a greenlet appends what it pulled (waiting for
        space) and reads the rest of the answer the blocking way, through the iterator."""
        self._become(Mode.HANDING_BACK)
        self._stop_watching()
        self._rest = rest
        self.greenlet = Greenlet(self._resume)
        self.greenlet.start()

    def _resume(self) -> None:
        self._guarded(Mode.HANDED_BACK, self._relay_rest)

    def _relay_rest(self) -> None:
        rest, self._rest = self._rest, []
        for item in rest:
            if isinstance(item, ProviderError):
                raise item
            if isinstance(item, str):
                self._content(item)
            elif isinstance(item, Reasoning):
                self._reasoned(item)
            else:
                self._finished(item)
                return
        assert self._items is not None
        self._relay(self._items)

    def _content(self, piece: str) -> None:
        if self.first_content_at is None:
            self.first_content_at = time.monotonic()
        self.content_pieces += 1
        self.log.append({"content": piece, "commandId": self.log.stream_id})

    def _reasoned(self, piece: Reasoning) -> None:
        self.reasoning_pieces += 1
        if self.reasoning:
            self.log.append({"reasoning": piece.text, "commandId": self.log.stream_id})

    def _wind_down(self) -> None:
        """The pump's end, once the terminal event is written: the upstream closed at once, then
        the end hook in a greenlet (it may block)."""
        self._stop_watching()
        self._disarm()
        self._close_items()
        self._end_hook_apart()

    def _end_hook_apart(self) -> None:
        """The end hook in a greenlet of its own: it may wait on Redis (the slot's release, the
        token charge), which a hub callback must not, and where a queued throw must not land."""
        self.greenlet = Greenlet(self._call_on_end)
        self.greenlet.start()

    def _stop_watching(self) -> None:
        self._pump = None
        if self._watcher is not None:  # before the socket closes: libev must not watch its fd
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    def _interrupted(self, stop: Interrupted) -> None:
        if stop.code == "upstream_timeout":
            self.error_kind = "timeout"
        self._end(stop.code, {"error": stop.message, "code": stop.code})

    def _finished(self, finish: Finish) -> None:
        self.finish = finish
        self._end("done", _done_payload(finish))

    def _fail(self, error: ProviderError) -> None:
        self.error_kind = error.kind
        self._end(error.code, {"error": error.message, "code": error.code})

    def _close_items(self) -> None:
        """Let go of what the provider gave: its iterator, closed (which closes the upstream),
        and what the pump pulled that no greenlet appended (an interrupt came first)."""
        self._rest = []
        items, self._items = self._items, None
        close = getattr(items, "close", None) if items is not None else None
        if close is not None:
            close()

    def _call_on_end(self) -> None:
        # Called once and let go: the registry's hook closes over the stream, which holds
        # this generation, and that cycle would keep the stream's events (its whole answer)
        # alive after it expired until a full collection, which an idle worker never runs.
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end(self)

    def _end(self, outcome: str, payload: dict[str, Any]) -> None:
        """Write the terminal event, unless one is written (the first way out wins)."""
        if self.mode is Mode.ENDED:
            return
        self._become(Mode.ENDED)
        self.outcome = outcome
        payload["commandId"] = self.log.stream_id
        if outcome == "done":
            self.log.append(payload, final=True)
        else:
            self.log.append(payload, name="error", final=True)

    def _arm(self, seconds: float) -> None:
        self._timer = gevent.get_hub().loop.timer(max(seconds, 0.001))
        self._timer.start(self._check_silence)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def _check_silence(self) -> None:
        """Timer callback (in the hub): interrupt on silence, else re-arm for the remainder."""
        self._disarm()
        if not self.running:
            return
        idle = time.monotonic() - self.last_activity
        if idle >= self.upstream_timeout:
            self.interrupt("upstream_timeout", "The model service did not answer in time.")
        else:
            self._arm(self.upstream_timeout - idle)


def _done_payload(finish: Finish) -> dict[str, Any]:
    payload: dict[str, Any] = {"done": True, "finishReason": finish.reason, "model": finish.model}
    if finish.usage is not None:
        usage = finish.usage
        payload["usage"] = {"promptTokens": usage.prompt_tokens,
                            "completionTokens": usage.completion_tokens}
        if usage.reasoning_tokens is not None:
            payload["usage"]["reasoningTokens"] = usage.reasoning_tokens
    return payload
