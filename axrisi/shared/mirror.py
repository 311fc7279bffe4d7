"""The writing side of resumable streams: this worker's events, copied to Redis in order.

Every stream's :class:`~axrisi.stream.eventlog.EventLog` already holds its events; the mirror only
remembers, per stream, the highest event Redis is known to hold (``written``) and which streams
have more (``dirty``). One writer greenlet per worker copies the difference in one pipeline, one
batch at a time, so batches can never overtake each other (Redis refuses an entry id below the
stream's top). What cannot be written now stays unwritten in the log and goes out, in order,
when Redis answers again: nothing is dropped while the stream is resumable, within the log's
own cap (``AXRISI_RESUME_MAX_EVENTS``).

Writes are idempotent: a Lua script adds only the entries above the stream's top and refuses a
batch that would leave a hole, answering the top instead; the writer then resends from there.
That one check also heals the loss of Redis's data (a restart without persistence): the worker's
heartbeat notices that Redis forgot it, marks every stream it still keeps as dirty, and the
script's answers rewind each one to what Redis really holds.

The heartbeat (every :data:`HEARTBEAT_SECONDS`) also publishes what readers elsewhere need to
tell "unknown" from "not written yet" and "running" from "orphaned": this worker's lease in
``axrisi:workers`` and the time up to which every stream it started is in Redis
(``axrisi:synced``). See :mod:`axrisi.shared.events` for the reading side.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import gevent
import redis
from gevent.event import Event

from ..stream.eventlog import EventLog
from .store import OUTAGE_ERRORS, SharedStore

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.005
"""How long the writer lets events gather before it writes them (one pipeline per batch)."""
HEARTBEAT_SECONDS = 1.0
MAX_FRAMES_PER_WRITE = 1000
BACKOFF_SECONDS = (0.05, 0.1, 0.2, 0.25)
"""Waits between writes while Redis does not answer: short, since every reader waits on us."""

WORKERS_KEY = "axrisi:workers"
"""Sorted set: worker id -> when its lease lapses (ms since the epoch)."""
SYNCED_KEY = "axrisi:synced"
"""Hash: worker id -> a time (ms) before which every stream it started is in Redis."""
BOOT_KEY = "axrisi:boot"
"""When this Redis dataset first met a worker (ms): a young dataset may have lost streams."""


def events_key(stream_id: int) -> str:
    return f"axrisi:events:{stream_id}"


def meta_key(stream_id: int) -> str:
    """Hash: the stream's ``owner`` (a user key) and the ``worker`` that generates it."""
    return f"axrisi:stream:{stream_id}"


def attached_key(stream_id: int) -> str:
    return f"axrisi:attached:{stream_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


_APPEND = """
local top = -1
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then
  top = tonumber(string.match(newest[1][1], '%-(%d+)$'))
  local fields = newest[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 't' then return {top, 1} end
  end
end
local first = tonumber(ARGV[2])
if first > top + 1 and ARGV[3] == '0' then return {top, 2} end
local final = tonumber(ARGV[8])
for i = 9, #ARGV do
  local seq = first + i - 9
  if seq > top then
    local id = ARGV[1] .. '-' .. seq
    if i - 8 == final then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[7], id, 'f', ARGV[i], 't', '1')
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[7], id, 'f', ARGV[i])
    end
    top = seq
  end
end
redis.call('HSET', KEYS[2], 'owner', ARGV[5], 'worker', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if top >= 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return {top, 0}
"""
"""Add a stream's events from ARGV[2] on; answers {top, 0 written | 1 ended | 2 a hole}."""

_HEARTBEAT = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
for _, worker in ipairs(dead) do redis.call('HDEL', KEYS[2], worker) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local new = redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('SET', KEYS[3], ARGV[2], 'NX')
return new
"""
"""Renew this worker's lease and publish its synced time; answers 1 when Redis had forgotten it."""


@dataclass(eq=False)
class Mirrored:
    """What the writer knows of one stream."""

    log: EventLog
    owner: str
    written: int = -1
    """The highest event position Redis is known to hold (-1: none)."""
    done: bool = False
    """The terminal event is in Redis: nothing more to write unless Redis loses it."""
    ended_at: float | None = None


class EventMirror:
    """One writer per worker: streams' events to Redis, in order, retried until written."""

    def __init__(self, store: SharedStore, ttl_seconds: int, running_ttl_seconds: int,
                 max_events: int, lease_seconds: float) -> None:
        self.store = store
        self.ttl_ms = ttl_seconds * 1000
        self.running_ttl_ms = max(running_ttl_seconds, ttl_seconds) * 1000
        self.max_events = max_events
        self.lease_ms = int(lease_seconds * 1000)
        self.worker_id = uuid.uuid4().hex
        self.streams: dict[int, Mirrored] = {}
        self.dirty: dict[int, Mirrored] = {}
        self.synced_ms = 0
        self.first_beat_ms = 0
        """When this worker first registered in Redis (0: not yet)."""
        self._starting: list[int] = []
        self._wake = Event()
        self._append = store.background.register_script(_APPEND)
        self._heartbeat = store.background.register_script(_HEARTBEAT)
        self._writer: gevent.Greenlet[[], None] | None = None

    # The registry's hooks --------------------------------------------------------------------

    @contextmanager
    def starting(self) -> Iterator[None]:
        """Around a stream's start (its id, then :meth:`track`): until it is tracked, this
        worker does not claim in Redis that every stream it started is written."""
        begun = now_ms()
        self._starting.append(begun)
        try:
            yield
        finally:
            self._starting.remove(begun)

    def track(self, event_log: EventLog, owner: str) -> None:
        """Mirror this stream from now on (its events reach the mirror via :meth:`on_append`)."""
        entry = Mirrored(event_log, owner)
        self.streams[event_log.stream_id] = entry
        self.dirty[event_log.stream_id] = entry
        self._wake.set()

    def on_append(self, event_log: EventLog, _seq: int, _frame: bytes, final: bool) -> None:
        """EventLog hook: the stream has more to write; the writer picks it up within ms."""
        entry = self.streams.get(event_log.stream_id)
        if entry is None:
            return
        if final:
            entry.ended_at = time.monotonic()
        self.dirty[event_log.stream_id] = entry
        self._wake.set()

    def wait_written(self, stream_id: int, timeout: float) -> bool:
        """Block until the stream's terminal event is in Redis (False after ``timeout``: Redis
        slow or away; the writer goes on trying, in order, as always)."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.streams.get(stream_id)
            if entry is None or entry.done:
                return True
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(FLUSH_SECONDS)

    def forget(self, stream_id: int) -> None:
        """The registry dropped the stream (its TTL or the memory cap): stop keeping it."""
        self.streams.pop(stream_id, None)
        self.dirty.pop(stream_id, None)

    # The writer ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer (and so the heartbeat) in this worker."""
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._write_forever)

    def _synced_now(self) -> int:
        """The time before which every stream of this worker is tracked (ids are >= it)."""
        return min([now_ms(), *self._starting])

    def _write_forever(self) -> None:
        """Write what is dirty, in one pipeline at a time; heartbeat every second meanwhile."""
        failures = 0
        next_beat = 0.0
        while True:
            if time.monotonic() >= next_beat:
                beat = self._beat()
                next_beat = time.monotonic() + (HEARTBEAT_SECONDS if beat else BACKOFF_SECONDS[-1])
            if self.dirty and not self._flush():
                gevent.sleep(BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)])
                failures += 1
                continue
            failures = 0
            if not self.dirty:
                self._wake.wait(max(0.0, next_beat - time.monotonic()))
                gevent.sleep(FLUSH_SECONDS)  # let a burst of appends gather into one write
            self._wake.clear()

    def _beat(self) -> bool:
        """Renew this worker's lease; when Redis had forgotten it, re-check every stream."""
        if self.store.open:
            return False
        if not self.dirty:
            self.synced_ms = max(self.synced_ms, self._synced_now())
        beat_ms = now_ms()
        try:
            forgotten = self._heartbeat(
                keys=[WORKERS_KEY, SYNCED_KEY, BOOT_KEY],
                args=[self.worker_id, beat_ms, self.lease_ms, self.synced_ms])
        except OUTAGE_ERRORS as error:
            self.store.failed(error)
            return False
        self.store.succeeded()
        self.first_beat_ms = self.first_beat_ms or beat_ms
        if forgotten:
            self._expire()
            self.dirty.update(self.streams)  # each write answers what Redis really holds
        return True

    def _expire(self) -> None:
        """Stop keeping finished streams whose events Redis no longer keeps either."""
        cutoff = time.monotonic() - self.ttl_ms / 1000
        for stream_id, entry in list(self.streams.items()):
            if entry.ended_at is not None and entry.ended_at < cutoff:
                self.forget(stream_id)

    def _flush(self) -> bool:
        """One pipeline for every dirty stream; False when Redis did not answer."""
        if self.store.open:
            return False
        started = self._synced_now()
        batch, self.dirty = list(self.dirty.values()), {}
        pipe = self.store.background.pipeline(transaction=False)
        targets = [self._queue(pipe, entry) for entry in batch]
        try:
            replies = pipe.execute()
        except OUTAGE_ERRORS as error:
            self.store.failed(error)
            self._redo(batch)
            return False
        except redis.ResponseError:
            log.exception("Redis refused the mirror's write")  # a bug, not an outage
            self._redo(batch)
            return False
        self.store.succeeded()
        complete = True
        for entry, target, (top, status) in zip(batch, targets, replies, strict=True):
            complete = self._settle(entry, target, int(top), int(status)) and complete
        if complete:
            self.synced_ms = max(self.synced_ms, started)
        return True

    def _redo(self, batch: list[Mirrored]) -> None:
        for entry in batch:
            if entry.log.stream_id in self.streams:
                self.dirty[entry.log.stream_id] = entry

    def _queue(self, pipe: redis.client.Pipeline, entry: Mirrored) -> int:
        """Queue one stream's unwritten events; returns the position Redis must then reach for
        the stream to be written as far as it is now (a batch may be capped)."""
        event_log = entry.log
        first = entry.written + 1
        gap = first < event_log.base  # the log's cap dropped them before Redis took them
        if gap:
            first = event_log.base
        frames = event_log.read(first, MAX_FRAMES_PER_WRITE)
        end = first + len(frames)
        final = len(frames) if event_log.ended and end == event_log.next_seq else 0
        self._append(keys=[events_key(event_log.stream_id), meta_key(event_log.stream_id)],
                     args=[event_log.stream_id, first, int(gap), self._ttl_ms(entry), entry.owner,
                           self.worker_id, self.max_events, final, *frames],
                     client=pipe)
        return event_log.next_seq

    def _ttl_ms(self, entry: Mirrored) -> int:
        if entry.ended_at is None:
            return self.running_ttl_ms
        left = self.ttl_ms - (time.monotonic() - entry.ended_at) * 1000
        return max(1000, int(left))

    def _settle(self, entry: Mirrored, target: int, top: int, status: int) -> bool:
        """Record what Redis holds now; True when the stream is written as far as it was."""
        entry.written = top
        if status == 1:  # ended in Redis (by us, or by a reader that found us gone)
            entry.done = True
            return True
        if top + 1 < entry.log.next_seq and entry.log.stream_id in self.streams:
            self.dirty[entry.log.stream_id] = entry
        if entry.log.ended and top + 1 >= entry.log.next_seq:
            entry.done = True
        return status == 0 and top + 1 >= target
