"""Streams of this worker: creation, lookup for resume, retention, and cancellation on leave.

A :class:`Stream` ties a stream's event log to its generation and its owner. Clients attach and
detach; when the last one detaches while the model is still generating, the generation is
interrupted at once (``AXRISI_RESUME_GRACE_SECONDS`` = 0, the default) or when the grace runs out
with nobody back (here or, through Redis, on another instance).

A stream stays resumable while it runs and for ``AXRISI_RESUME_TTL_SECONDS`` after it ends. Memory
is bounded twice: each log keeps at most ``max_events`` events, and finished streams are dropped
oldest first when their frames pass ``max_retained_bytes`` in total.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gevent

from . import metrics
from .commands import CATALOG, RunRequest
from .eventlog import EventLog
from .generation import Generation
from .ids import IdAllocator
from .providers.base import Provider

if TYPE_CHECKING:
    from .mirror import EventMirror

log = logging.getLogger(__name__)

CANCELLED_MESSAGE = "The stream was cancelled because its client left."


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
    clients: int = 0
    ended_at: float | None = None
    settled: bool = False
    """True once the end hooks ran (slot given back, tokens charged): see ``relay``."""
    cancel_requested_at: float | None = None
    _grace_timer: gevent.Greenlet | None = field(default=None, repr=False)


@dataclass
class Retention:
    """How long and how much of the streams' events this worker keeps for resumes."""

    ttl_seconds: float = 300.0
    grace_seconds: float = 0.0
    max_events: int = 10_000
    max_retained_bytes: int = 64 * 1024 * 1024


class StreamRegistry:
    """The streams this worker runs or recently ran."""

    def __init__(self, provider: Provider, ids: IdAllocator, upstream_timeout: float,
                 retention: Retention, owner_key: Callable[[str], str],
                 on_end: Callable[[Stream], None] | None = None,
                 mirror: EventMirror | None = None,
                 attached_elsewhere: Callable[[int], bool] | None = None) -> None:
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

    def start(self, user: str, request: RunRequest, lease: object | None = None) -> Stream:
        """Create the stream, write its title event and start the generation."""
        command = CATALOG[request.command]
        owner = self.owner_key(user)
        if self.mirror is None:
            event_log = EventLog(self.ids.next_id(), self.retention.max_events)
        else:
            with self.mirror.starting():
                event_log = EventLog(self.ids.next_id(), self.retention.max_events,
                                     self.mirror.on_append)
                self.mirror.track(event_log, owner)
        stream_id = event_log.stream_id
        event_log.append({"title": command.title(request), "commandId": stream_id})
        generation = Generation(event_log, self.provider, command.prompt(request),
                                self.upstream_timeout)
        stream = Stream(stream_id, user, owner, request.command, event_log, generation, lease)
        generation.on_end = lambda _g: self._ended(stream)
        self.running[stream_id] = stream
        metrics.stream_started()
        generation.start()
        return stream

    def lookup(self, stream_id: int) -> Stream | None:
        """A running stream, or a finished one still within its TTL."""
        self._expire()
        return self.running.get(stream_id) or self.finished.get(stream_id)

    def attach(self, stream: Stream) -> None:
        """A client connection starts following the stream."""
        stream.clients += 1
        if stream._grace_timer is not None:
            stream._grace_timer.kill(block=False)
            stream._grace_timer = None

    def detach(self, stream: Stream) -> None:
        """A client connection ended; with no client left, cancel (now or after the grace)."""
        stream.clients -= 1
        if stream.clients > 0 or not stream.generation.running:
            return
        if self.retention.grace_seconds <= 0:
            self._cancel(stream)
        elif stream._grace_timer is None:
            stream._grace_timer = gevent.spawn_later(self.retention.grace_seconds,
                                                     self._grace_over, stream)

    def _grace_over(self, stream: Stream) -> None:
        stream._grace_timer = None
        if stream.clients > 0 or not stream.generation.running:
            return
        if self.attached_elsewhere is not None and self.attached_elsewhere(stream.id):
            stream._grace_timer = gevent.spawn_later(self.retention.grace_seconds,
                                                     self._grace_over, stream)
            return
        self._cancel(stream)

    @staticmethod
    def _cancel(stream: Stream) -> None:
        stream.cancel_requested_at = time.monotonic()
        stream.generation.interrupt("cancelled", CANCELLED_MESSAGE)

    @staticmethod
    def tokens_used(stream: Stream) -> int:
        """What the stream cost: the upstream's usage, or a count where it reported none."""
        generation = stream.generation
        usage = generation.finish.usage if generation.finish is not None else None
        if usage is not None:
            return usage.prompt_tokens + usage.completion_tokens
        return math.ceil(generation.prompt_chars / 4) + generation.content_pieces

    @staticmethod
    def tokens_out(stream: Stream) -> int:
        """Output tokens: the upstream's count where reported, else the content pieces."""
        finish = stream.generation.finish
        if finish is not None and finish.usage is not None:
            return finish.usage.completion_tokens
        return stream.generation.content_pieces

    def _ended(self, stream: Stream) -> None:
        self.running.pop(stream.id, None)
        if stream._grace_timer is not None:
            stream._grace_timer.kill(block=False)
            stream._grace_timer = None
        stream.ended_at = time.monotonic()
        generation = stream.generation
        metrics.stream_ended(generation.outcome or "internal", generation.started_at,
                             generation.first_content_at, stream.ended_at,
                             self.tokens_out(stream), generation.error_kind,
                             stream.cancel_requested_at)
        self.finished[stream.id] = stream
        self.finished_bytes += stream.log.size
        self._expire()
        try:
            if self.on_end is not None:
                self.on_end(stream)
        except Exception:
            log.exception("stream end hook failed")
        finally:
            stream.settled = True
            stream.log.wake()

    def _expire(self) -> None:
        """Drop finished streams past their TTL, and the oldest ones past the memory cap."""
        now = time.monotonic()
        while self.finished:
            oldest = next(iter(self.finished.values()))
            expired = oldest.ended_at is not None and \
                now - oldest.ended_at > self.retention.ttl_seconds
            if not expired and self.finished_bytes <= self.retention.max_retained_bytes:
                break
            self.finished.popitem(last=False)
            self.finished_bytes -= oldest.log.size
            if self.mirror is not None:
                self.mirror.forget(oldest.id)
