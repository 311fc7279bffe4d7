"""Streams of this worker: creation, lookup for resume, retention, and cancellation on leave.

A :class:`Stream` ties a stream's event log to its generation and its owner. Clients attach and
detach; when the last one detaches while the model is still generating, the generation is
interrupted at once (``AXRISI_RESUME_GRACE_SECONDS`` = 0, the default) or when the grace runs out
with nobody back (here or, through Redis, on another instance).

A stream stays resumable while it runs and for ``AXRISI_RESUME_TTL_SECONDS`` after it ends
(dropped on time by a timer armed while finished streams are kept, and the memory given back:
``memory.py``). Memory is bounded twice: each log keeps at most ``max_events`` events and
``max_bytes`` bytes, and finished streams are dropped oldest first when their frames pass
``max_retained_bytes`` in total.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import gevent

from .. import metrics
from ..commands import CATALOG, RunRequest
from ..providers.base import Provider
from .ending import StreamEnd, StreamState
from .eventlog import EventLog
from .generation import Generation
from .listing import Listed
from .memory import Reclaimer
from .ports import EventMirror, IdAllocator

log = logging.getLogger(__name__)

CANCELLED_MESSAGE = "The stream was cancelled because its client left."
STOPPED_MESSAGE = "The stream was stopped."
BACKGROUND_OVER_MESSAGE = "The background stream ran for its longest allowed time."
EXPIRY_SLACK_SECONDS = 1.0
"""Finished streams past their TTL are dropped together, up to this long after the first one's."""
MIRROR_WAIT_SECONDS = 0.5
"""How long a finished stream's response may wait for its last events to reach the shared
state (within the relay's ``SETTLE_SECONDS``; a Redis that does not answer costs this once)."""


@dataclass(eq=False)
class Stream:
    """One stream: its id, owner, events and generation."""

    id: int
    user: str
    owner_key: str
    command: str
    log: EventLog
    generation: Generation
    lease: object | None = None
    title: str = ""
    started_ms: int = 0
    """When it started, in ms since the epoch (``GET /api/streams``'s ``startedAt``)."""
    background: bool = False
    """Generates to its end whether or not anyone reads it (the request's ``background``)."""
    clients: int = 0
    state: StreamState = StreamState.GENERATING
    """Changed only by the registry (``ending.py`` draws the transitions)."""
    end: StreamEnd | None = None
    """How it ended: set when the terminal event is written, before the end hooks run."""
    cancel_requested_at: float | None = None

    @property
    def listed(self) -> Listed:
        """Its entry in its owner's list of streams (``GET /api/streams``), as at its start."""
        return Listed(self.id, self.command, self.title, self.started_ms, self.background)

    @property
    def settled(self) -> bool:
        """True once the end hooks ran (slot given back, tokens charged): see ``relay``."""
        return self.state is StreamState.SETTLED


@dataclass
class Retention:
    """How long and how much of the streams' events this worker keeps for resumes."""

    ttl_seconds: float = 300.0
    grace_seconds: float = 0.0
    background_max_seconds: float = 600.0
    """The longest a background stream generates; then it ends ``cancelled``."""
    unsure_seconds: float = 60.0
    """How long a stream in grace goes on while nobody can tell whether a reader came back
    elsewhere (Redis unreachable): the lease, after which such readers are ended anyway."""
    max_events: int = 10_000
    max_bytes: int = 1024 * 1024
    max_retained_bytes: int = 64 * 1024 * 1024


class StreamRegistry:
    """The streams this worker runs or recently ran."""

    def __init__(self, provider: Provider, ids: IdAllocator, upstream_timeout: float,
                 retention: Retention, owner_key: Callable[[str], str],
                 on_end: Callable[[Stream, StreamEnd], None] | None = None,
                 mirror: EventMirror | None = None,
                 attached_elsewhere: Callable[[int], bool | None] | None = None) -> None:
        self.provider = provider
        self.ids = ids
        self.upstream_timeout = upstream_timeout
        self.retention = retention
        self.owner_key = owner_key
        self.on_end = on_end
        self.mirror = mirror
        self.attached_elsewhere = attached_elsewhere
        self.running: dict[int, Stream] = {}
        self.finished: OrderedDict[int, Stream] = OrderedDict()
        self.finished_bytes = 0
        self._grace: dict[int, gevent.Greenlet[[Stream], None]] = {}
        self._deadlines: dict[int, gevent.Greenlet[[Stream, str], None]] = {}
        """The background streams' ends at ``background_max_seconds``."""
        self._unsure: dict[int, float] = {}
        """Streams in grace whose readers elsewhere nobody could see, since when (monotonic)."""
        self._expiry: Any = None  # the libev timer of the next expiry, while streams are kept
        self.reclaimer = Reclaimer()

    def starting(self) -> AbstractContextManager[None]:
        """Around a stream's start, from its id's claim (which may come with its admission,
        before :meth:`start`) until the mirror tracks it: see ``EventMirror.starting``."""
        return self.mirror.starting() if self.mirror is not None else nullcontext()

    def start(self, user: str, request: RunRequest, lease: object | None = None,
              stream_id: int | None = None) -> Stream:
        """Create the stream, write its title event and start the generation. ``stream_id``:
        already claimed (inside :meth:`starting`), else taken from the id allocator."""
        command = CATALOG[request.command]
        owner = self.owner_key(user)
        title, started_ms = command.title(request), int(time.time() * 1000)
        with self.starting():
            if stream_id is None:
                stream_id = self.ids.next_id(owner)
            if self.mirror is None:
                event_log = EventLog(stream_id, self.retention.max_events,
                                     max_bytes=self.retention.max_bytes)
            else:
                event_log = EventLog(stream_id, self.retention.max_events,
                                     self.mirror.on_append, self.retention.max_bytes)
                self.mirror.track(event_log, owner, Listed(stream_id, request.command, title,
                                                           started_ms, request.background))
        event_log.append({"title": title, "commandId": stream_id})
        generation = Generation(event_log, self.provider, command.prompt(request),
                                self.upstream_timeout, reasoning=request.reasoning)
        stream = Stream(stream_id, user, owner, request.command, event_log, generation, lease,
                        title=title, started_ms=started_ms, background=request.background)
        generation.on_end = lambda _g: self._ended(stream)
        self.running[stream_id] = stream
        metrics.stream_started()
        generation.start()
        if request.background:
            self._deadlines[stream_id] = gevent.spawn_later(
                self.retention.background_max_seconds, self._cancel, stream,
                BACKGROUND_OVER_MESSAGE)
        return stream

    def streams_of(self, owner: str) -> list[Stream]:
        """``owner``'s streams on this worker that can still be read: running, or ended within
        their TTL."""
        self._expire()
        return [stream for streams in (self.running, self.finished)
                for stream in streams.values() if stream.owner_key == owner]

    def lookup(self, stream_id: int) -> Stream | None:
        """A running stream, or a finished one still within its TTL."""
        self._expire()
        return self.running.get(stream_id) or self.finished.get(stream_id)

    def attach(self, stream: Stream) -> None:
        """A client connection starts following the stream."""
        stream.clients += 1
        if stream.state is StreamState.IN_GRACE:
            self._stop_grace(stream)
            stream.state = StreamState.GENERATING

    def detach(self, stream: Stream) -> None:
        """A client connection ended; with no client left, cancel (now or after the grace)."""
        stream.clients -= 1
        if stream.clients > 0 or stream.state is not StreamState.GENERATING \
                or stream.background:
            return
        if self.retention.grace_seconds <= 0:
            self._cancel(stream)
        else:
            stream.state = StreamState.IN_GRACE
            self._grace[stream.id] = gevent.spawn_later(self.retention.grace_seconds,
                                                        self._grace_over, stream)

    def _grace_over(self, stream: Stream) -> None:
        """The grace ran out: cancel, unless a reader follows it elsewhere or nobody can tell
        (a worker that cannot see Redis cannot know that nobody came back: it goes on, for at
        most ``unsure_seconds``)."""
        self._grace.pop(stream.id, None)
        if stream.state is not StreamState.IN_GRACE:
            return
        attached = self.attached_elsewhere(stream.id) if self.attached_elsewhere else False
        if attached is None:
            now = time.monotonic()
            since = self._unsure.setdefault(stream.id, now)
            attached = now - since < self.retention.unsure_seconds
        else:
            self._unsure.pop(stream.id, None)
        if attached:
            self._grace[stream.id] = gevent.spawn_later(self.retention.grace_seconds,
                                                        self._grace_over, stream)
            return
        self._cancel(stream)

    def _stop_grace(self, stream: Stream) -> None:
        self._unsure.pop(stream.id, None)
        timer = self._grace.pop(stream.id, None)
        if timer is not None:
            timer.kill(block=False)

    def stop(self, stream_id: int) -> bool:
        """Its owner stopped the stream (``DELETE``): it ends as ``cancelled`` now, whoever is
        attached and whatever the grace. False when this worker does not run it."""
        stream = self.running.get(stream_id)
        if stream is None:
            return False
        self._cancel(stream, STOPPED_MESSAGE)
        return True

    @staticmethod
    def _cancel(stream: Stream, message: str = CANCELLED_MESSAGE) -> None:
        stream.cancel_requested_at = time.monotonic()
        stream.generation.interrupt("cancelled", message)

    def _ended(self, stream: Stream) -> None:
        """The generation wrote the terminal event: ENDED, the end hooks, then SETTLED.

        SETTLED waits (briefly) for the mirror too, so that when a client sees its response end,
        a resume or a DELETE on another instance already finds the whole stream there.
        """
        self.running.pop(stream.id, None)
        self._stop_grace(stream)
        deadline = self._deadlines.pop(stream.id, None)
        if deadline is not None:
            deadline.kill(block=False)
        stream.state = StreamState.ENDED
        stream.end = end = StreamEnd.of(stream.generation, time.monotonic(),
                                        stream.cancel_requested_at)
        self.finished[stream.id] = stream
        self.finished_bytes += stream.log.size
        self._expire()
        self._expire_later()
        try:
            if self.on_end is not None:
                self.on_end(stream, end)
            if self.mirror is not None:  # a reader elsewhere sees what this client saw
                self.mirror.wait_written(stream.id, MIRROR_WAIT_SECONDS)
        except Exception:
            log.exception("stream end hook failed")
        finally:
            # After the hooks: a scrape that sees the stream gone sees its slot back too.
            metrics.stream_ended(end)
            stream.state = StreamState.SETTLED
            stream.log.wake()

    def _expire(self) -> None:
        """Drop finished streams past their TTL, and the oldest ones past the memory cap."""
        now = time.monotonic()
        while self.finished:
            oldest = next(iter(self.finished.values()))
            expired = oldest.end is not None and \
                now - oldest.end.ended_at > self.retention.ttl_seconds
            if not expired and self.finished_bytes <= self.retention.max_retained_bytes:
                break
            self.finished.popitem(last=False)
            self.finished_bytes -= oldest.log.size
            self.reclaimer.dropped_bytes(oldest.log.size)
            if self.mirror is not None:
                self.mirror.forget(oldest.id)
        self.reclaimer.settle()

    def _expire_later(self) -> None:
        """Expire on time even when no request comes: one libev timer per worker (no greenlet),
        armed only while finished streams are kept, firing when the oldest one's TTL runs out.
        Its callback runs in the hub: ``_expire`` does no I/O (the mirror only forgets)."""
        if self._expiry is not None or not self.finished:
            return
        oldest = next(iter(self.finished.values()))
        ended_at = oldest.end.ended_at if oldest.end is not None else time.monotonic()
        delay = max(0.0, ended_at + self.retention.ttl_seconds - time.monotonic())
        self._expiry = gevent.get_hub().loop.timer(delay + EXPIRY_SLACK_SECONDS, ref=False)
        self._expiry.start(self._expire_on_time)

    def _expire_on_time(self) -> None:
        self._expiry.close()
        self._expiry = None
        try:
            self._expire()
        except Exception:  # a hub callback must not raise
            log.exception("expiring finished streams failed")
        self._expire_later()
