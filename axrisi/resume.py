"""Resumable streams across processes: events mirrored to Redis Streams, read back anywhere.

With ``REDIS_URL`` set, every event of every stream is also written to a Redis stream whose entry
ids are the events' own ids (``<commandId>-<n>`` is a valid Redis stream id, and increases), so
a client whose reconnect lands on another worker or instance can be served with ``XREAD`` from
the id it last saw: the replay and the live tail are one loop. Writes are batched: appends go to
a per-worker buffer that one greenlet flushes in a pipeline every few milliseconds, so the relay
never waits on Redis per token. Keys are capped (``MAXLEN ~``) and expire
``AXRISI_RESUME_TTL_SECONDS`` after the stream ends.

A follower attached through Redis marks the stream as attached (a key it keeps renewing), so
that the generating worker's grace timer does not cancel a stream that somebody reads elsewhere.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import gevent
import redis

from .errors import ApiError
from .shared import SharedStore, redis_options

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.005
_STREAM_ID = re.compile(r"^[1-9][0-9]{0,18}$")


def not_found() -> ApiError:
    return ApiError(404, "not_found", "There is no such stream, or it has expired.")


def parse_stream_id(value: str) -> int:
    """A stream id from the URL; anything else is simply not a stream we know (404)."""
    if not _STREAM_ID.match(value):
        raise not_found()
    return int(value)


def resume_position(stream_id: int, last_event_id: str | None) -> int:
    """The position after ``last_event_id`` (0 without one); 400 if it names another stream."""
    if last_event_id is None or last_event_id.strip() == "":
        return 0
    prefix, _, seq = last_event_id.strip().rpartition("-")
    if prefix != str(stream_id) or not seq.isdigit() or len(seq) > 12:
        raise ApiError(400, "invalid_request",
                       "Last-Event-ID is not the id of an event of this stream.")
    return int(seq) + 1


def events_key(stream_id: int) -> str:
    return f"axrisi:events:{stream_id}"


def owner_key(stream_id: int) -> str:
    return f"axrisi:owner:{stream_id}"


def attached_key(stream_id: int) -> str:
    return f"axrisi:attached:{stream_id}"


class RedisEvents:
    """The Redis side of resumable streams: a batched writer and a blocking reader."""

    def __init__(self, store: SharedStore, ttl_seconds: int, running_ttl_seconds: int,
                 max_events: int) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self.running_ttl = max(running_ttl_seconds, ttl_seconds)
        self.max_events = max_events
        self.pending: list[tuple[int, int, bytes, bool]] = []
        self._flusher: gevent.Greenlet | None = None
        self.reader = redis.Redis.from_url(store.url, **{**redis_options(),
                                                         "socket_timeout": None})

    # Writing ------------------------------------------------------------------------------

    def register(self, stream_id: int, owner: str) -> None:
        """Record the stream's owner (a user key) so that other instances can check it."""
        self.store.run(lambda r: r.set(owner_key(stream_id), owner, ex=self.running_ttl),
                       lambda: None)

    def on_append(self, log_: Any, seq: int, frame: bytes, final: bool) -> None:
        """EventLog hook: queue the event; the flusher sends it within a few milliseconds."""
        self.pending.append((log_.stream_id, seq, frame, final))
        if self._flusher is None:
            self._flusher = gevent.spawn_later(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        self._flusher = None
        if batch:
            self.store.run(lambda r: self._write(r, batch), lambda: None)

    def _write(self, client: redis.Redis, batch: list[tuple[int, int, bytes, bool]]) -> None:
        pipe = client.pipeline(transaction=False)
        ttl_of: dict[int, int] = {}
        for stream_id, seq, frame, final in batch:
            fields: dict[str, Any] = {"f": frame}
            if final:
                fields["t"] = 1
            pipe.xadd(events_key(stream_id), fields, id=f"{stream_id}-{seq}",
                      maxlen=self.max_events, approximate=True)
            ttl_of[stream_id] = self.ttl if final else max(ttl_of.get(stream_id, 0),
                                                           self.running_ttl)
        for stream_id, ttl in ttl_of.items():
            pipe.expire(events_key(stream_id), ttl)
            pipe.expire(owner_key(stream_id), ttl)
        pipe.execute()

    # Reading ------------------------------------------------------------------------------

    def owner(self, stream_id: int) -> str | None:
        """The stream's owner key, or None when Redis does not know the stream (or is down)."""
        value = self.store.run(lambda r: r.get(owner_key(stream_id)), lambda: None)
        return value.decode() if isinstance(value, bytes) else value

    def first_kept_seq(self, stream_id: int) -> int | None:
        """The oldest kept event's position, or None when none is kept."""
        entries = self.store.run(lambda r: r.xrange(events_key(stream_id), count=1), lambda: [])
        if not entries:
            return None
        return int(entries[0][0].decode().rpartition("-")[2])

    def follow(self, stream_id: int, position: int, block_seconds: float,
               ) -> Iterator[list[bytes] | None]:
        """Batches of frames from ``position`` on; None after ``block_seconds`` of silence.

        Ends after the terminal event, or when the stream's key is gone.
        """
        last = f"{stream_id}-{position - 1}" if position > 0 else "0-0"
        key = events_key(stream_id)
        if self._ended_before(key, position):
            return
        while True:
            reply = self.reader.xread({key: last}, count=1000,
                                      block=max(1, int(block_seconds * 1000)))
            if not reply:
                if not self.reader.exists(key, owner_key(stream_id)):
                    return
                yield None
                continue
            frames = []
            ended = False
            for entry_id, fields in reply[0][1]:
                last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                frames.append(fields[b"f"])
                ended = ended or b"t" in fields
            yield frames
            if ended:
                return

    def _ended_before(self, key: str, position: int) -> bool:
        """True when the terminal event is already behind ``position``: nothing to wait for."""
        newest = self.reader.xrevrange(key, count=1)
        if not newest:
            return False
        entry_id, fields = newest[0]
        seq = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
                  .rpartition("-")[2])
        return b"t" in fields and seq < position

    def mark_attached(self, stream_id: int, seconds: float) -> None:
        """Tell the generating worker that a client reads this stream through Redis."""
        self.store.run(lambda r: r.set(attached_key(stream_id), 1,
                                       px=max(1000, int(seconds * 1000))), lambda: None)

    def clear_attached(self, stream_id: int) -> None:
        self.store.run(lambda r: r.delete(attached_key(stream_id)), lambda: None)

    def is_attached(self, stream_id: int) -> bool:
        return bool(self.store.run(lambda r: r.exists(attached_key(stream_id)), lambda: 0))
