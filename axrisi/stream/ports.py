"""What the streaming engine needs from the world outside the process, as interfaces.

The engine (this package) runs streams in one worker: it knows no Flask and no Redis. Where a
deployment shares state between workers and instances, it plugs an implementation of these
into the registry and the relays (``axrisi.shared`` implements them on Redis); without one, the
engine keeps everything in the process. Storing resumable events somewhere else than Redis means
implementing :class:`EventMirror` and :class:`RemoteEvents`, nothing more.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from .eventlog import EventLog
from .listing import Listed


class StreamLost(Exception):
    """A stream followed from elsewhere cannot be followed to its end (its worker is gone, or
    its events are): the relay ends the reply with an ``internal`` error event."""


class IdAllocator(Protocol):
    """Hands out ``commandId`` values unique within its scope."""

    def next_id(self, owner: str) -> int:
        """A new id for ``owner``'s stream, derived from the current time in milliseconds."""
        ...


class EventMirror(Protocol):
    """Copies this worker's streams' events where other workers and instances can read them."""

    def starting(self) -> AbstractContextManager[None]:
        """Around a stream's start (its id, then :meth:`track`)."""
        ...

    def track(self, event_log: EventLog, owner: str, listed: Listed | None = None) -> None:
        """Mirror this stream from now on; its events then arrive through :meth:`on_append`.
        ``listed``: its entry in its owner's list of streams, written with its first events."""
        ...

    def on_append(self, event_log: EventLog, seq: int, frame: bytes, final: bool) -> None:
        """The EventLog hook: one event was appended."""
        ...

    def forget(self, stream_id: int) -> None:
        """The registry dropped the stream: the mirror need not keep it any longer."""
        ...

    def wait_written(self, stream_id: int, timeout: float) -> bool:
        """Block until the stream's terminal event is mirrored (False after ``timeout``)."""
        ...


class RemoteEvents(Protocol):
    """Reads a stream that another worker or instance generates (see :func:`relay_remote`)."""

    def follow(self, stream_id: int, position: int, worker: str) -> Iterator[list[bytes] | None]:
        """Batches of frames from ``position`` on, None after each silence, until the terminal
        event; raises :class:`StreamLost` when the stream cannot be followed to its end (its
        ``worker``, the one generating it, gone)."""
        ...

    def lost_frame(self, stream_id: int, position: int) -> bytes:
        """The terminal event for a reader of a stream that cannot be followed to its end."""
        ...

    def mark_attached(self, stream_id: int, seconds: float) -> None:
        """Tell the generating worker that somebody reads the stream from here."""
        ...

    def clear_attached(self, stream_id: int) -> None:
        """The reader here has left."""
        ...
