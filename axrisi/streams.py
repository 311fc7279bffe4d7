"""Open streams of this worker: creation, lookup, the client count and cancellation on leave.

A :class:`Stream` ties a stream's event log to its generation and its owner. Clients attach and
detach; when the last one detaches while the model is still generating, the generation is
interrupted at once (``AXRISI_RESUME_GRACE_SECONDS`` = 0, the default) or after the grace.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent

from .commands import CATALOG, RunRequest
from .eventlog import EventLog
from .generation import Generation
from .ids import IdAllocator
from .providers.base import Provider

log = logging.getLogger(__name__)

CANCELLED_MESSAGE = "The stream was cancelled because its client left."


@dataclass(eq=False)
class Stream:
    """One stream: its id, owner, events and generation."""

    id: int
    user: str
    command: str
    log: EventLog
    generation: Generation
    lease: object | None = None
    clients: int = 0
    _grace_timer: gevent.Greenlet | None = field(default=None, repr=False)


class StreamRegistry:
    """The streams this worker runs; the place later features (resume, drain) look them up."""

    def __init__(self, provider: Provider, ids: IdAllocator, upstream_timeout: float,
                 grace_seconds: float,
                 on_end: Callable[[Stream], None] | None = None) -> None:
        self.provider = provider
        self.ids = ids
        self.upstream_timeout = upstream_timeout
        self.grace_seconds = grace_seconds
        self.on_end = on_end
        self.running: dict[int, Stream] = {}

    def start(self, user: str, request: RunRequest, lease: object | None = None) -> Stream:
        """Create the stream, write its title event and start the generation."""
        command = CATALOG[request.command]
        stream_id = self.ids.next_id()
        event_log = EventLog(stream_id)
        event_log.append({"title": command.title(request), "commandId": stream_id})
        generation = Generation(event_log, self.provider, command.prompt(request),
                                self.upstream_timeout)
        stream = Stream(stream_id, user, request.command, event_log, generation, lease)
        generation.on_end = lambda _g: self._ended(stream)
        self.running[stream_id] = stream
        generation.start()
        return stream

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
        if self.grace_seconds <= 0:
            stream.generation.interrupt("cancelled", CANCELLED_MESSAGE)
        elif stream._grace_timer is None:
            stream._grace_timer = gevent.spawn_later(
                self.grace_seconds, stream.generation.interrupt, "cancelled", CANCELLED_MESSAGE)

    @staticmethod
    def tokens_used(stream: Stream) -> int:
        """What the stream cost: the upstream's usage, or a count where it reported none."""
        generation = stream.generation
        usage = generation.finish.usage if generation.finish is not None else None
        if usage is not None:
            return usage.prompt_tokens + usage.completion_tokens
        prompt = generation.prompt
        return math.ceil((len(prompt.system) + len(prompt.user)) / 4) + generation.content_pieces

    def _ended(self, stream: Stream) -> None:
        self.running.pop(stream.id, None)
        if stream._grace_timer is not None:
            stream._grace_timer.kill(block=False)
            stream._grace_timer = None
        if self.on_end is not None:
            try:
                self.on_end(stream)
            except Exception:
                log.exception("stream end hook failed")
