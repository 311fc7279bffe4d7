"""The writing side of resumable streams: this worker's events, copied to Redis in order.

Every stream's :class:`~axrisi.stream.eventlog.EventLog` already holds its events; the mirror only
remembers, per stream, the highest event Redis is known to hold (``written``) and whether more
wait. One writer greenlet per worker copies the difference in one pipeline, one batch at a time,
so batches can never overtake each other. What cannot be written now stays unwritten in the log
and goes out, in order, when Redis answers again: nothing is dropped while the stream is
resumable, within the log's own cap (``AXRISI_RESUME_MAX_EVENTS``).

**What Redis spends per token.** Redis runs commands on one core, so its work per relayed token
is the deployment's ceiling. A stream's events reach Redis as one stream entry per flush, not
one per event: the entry's id is its last event's id (``<commandId>-<n>``), its fields the first
position (``s``), the frames back to back (``f``) with their lengths (``n``), and ``t`` when it
holds the terminal event; readers split it (:mod:`axrisi.shared.events`). A stream's events are
written at most :data:`BATCH_SECONDS` after they were appended (how far a reader on another
instance may lag), its end at once (:data:`FLUSH_SECONDS`). The writer knows
each stream's top, so a flush is one plain ``XADD`` with that id and ``NOMKSTREAM``: Redis itself
refuses an id at or below the stream's top (a write that landed although its reply was lost) and
a stream it lost (a restart, an eviction). Expiries are set when a stream starts and ends (and
renewed every third of the running TTL for long streams), not per flush.

**The slow path checks.** Whenever the writer cannot be sure what Redis holds (a write refused
or unanswered, Redis forgot this worker, its own lease may have lapsed so that a reader elsewhere
may have ended the stream as an orphan), the stream's next write is a Lua script that reads the
stream's top first: it adds the entry only right above the top, refuses one that would leave a
hole (answering the top; the writer then resends from there) and stops at a terminal event. The
same check heals the loss of Redis's data (a restart without persistence): the worker's
heartbeat notices that Redis forgot it and marks every stream it still keeps for the slow path,
whose answers rewind each one to what Redis really holds.

The heartbeat (every :data:`HEARTBEAT_SECONDS`) also publishes what readers elsewhere need to
tell "unknown" from "not written yet" and "running" from "orphaned": this worker's lease in
``keys.WORKERS`` and the time up to which every event it appended is in Redis
(``keys.SYNCED``). See :mod:`axrisi.shared.events` for the reading side.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import gevent
import redis
from gevent.event import Event
from redis.typing import EncodableT, FieldT

from ..stream.eventlog import EventLog
from ..stream.listing import Listed
from . import keys
from .store import OUTAGE_ERRORS, SharedStore

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.005
"""How long urgent writes (streams' ends, checked writes) gather before one pipeline."""
BATCH_SECONDS = 0.2
"""The longest an event waits before it is written to Redis: a reader on another instance is at
most this (plus a round trip) behind. Longer batches cost Redis less per token."""
HEARTBEAT_SECONDS = 1.0
MAX_FRAMES_PER_WRITE = 1000
BACKOFF_SECONDS = (0.05, 0.1, 0.2, 0.25)
"""Waits between writes while Redis does not answer: short, since every reader waits on us."""

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
local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])
if last >= first then
  if first ~= top + 1 and not (first > top + 1 and ARGV[4] == '1') then return {top, 2} end
  local entry = {'s', ARGV[2], 'f', ARGV[9]}
  if ARGV[10] ~= '' then table.insert(entry, 'n'); table.insert(entry, ARGV[10]) end
  if ARGV[8] == '1' then table.insert(entry, 't'); table.insert(entry, '1') end
  redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1] .. '-' .. ARGV[7], ARGV[1] .. '-' .. last,
             unpack(entry))
  top = last
end
redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[5])
if top >= 0 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return {top, 0}
"""
"""The checked write: one entry of positions ARGV[2]..ARGV[3] right above the top (or past a
hole the log's cap made, ARGV[4] = 1), and the stream's record (ARGV[6]); answers
{top, 0 written | 1 ended | 2 not right above}. Its keys share the stream's hash slot."""

_HEARTBEAT = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
for _, worker in ipairs(dead) do redis.call('HDEL', KEYS[2], worker) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local new = redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('SET', KEYS[3], ARGV[2], 'NX')
return new
"""
"""Renew this worker's lease and publish its synced time; answers 1 when Redis had forgotten it.
Its keys are the deployment's (one hash slot)."""


@dataclass(eq=False)
class Mirrored:
    """What the writer knows of one stream."""

    log: EventLog
    owner: str
    listed: Listed | None = None
    """Its entry in its owner's list of streams (``GET /api/streams``)."""
    list_due: bool = True
    """The entry is to be written, with the stream's next write (again after Redis lost it)."""
    written: int = -1
    """The highest event position Redis is known to hold (-1: none)."""
    created: bool = False
    """The stream's keys and their expiries are in Redis: later writes are plain XADDs."""
    checked: bool = False
    """The next write must go through the script: what Redis holds is not known for sure."""
    done: bool = False
    """The terminal event is in Redis: nothing more to write unless Redis loses it."""
    ended_at: float | None = None
    dirty_ms: int | None = None
    """Since when (ms since the epoch) events wait to be written; None: none wait."""
    refresh_at: float = 0.0
    """When (monotonic) the running stream's expiries are renewed."""


@dataclass
class SideWrite:
    """Commands of another part of the worker that ride in the writer's next pipeline (a stream
    end's slot release and token charge go with its terminal event: one round trip, not three).

    ``queue`` adds them to the pipeline and says how many; ``failed`` runs instead when Redis
    did not answer (the caller's own fallback: retry later, count locally)."""

    queue: Callable[[redis.client.Pipeline], int]
    failed: Callable[[], object]


@dataclass
class _Write:
    """One stream's part of a pipeline: what it queued and what success would mean."""

    entry: Mirrored
    kind: str
    """``none``, ``create``, ``append`` (plain XADD) or ``checked`` (the script)."""
    last: int = -1
    commands: int = 0
    queued_ms: int = field(default_factory=now_ms)


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
        self.urgent: dict[int, Mirrored] = {}
        """Streams to write in the next pipeline: ended ones, ones to check."""
        self.side: list[SideWrite] = []
        """Other writes for the next pipeline (:meth:`also`)."""
        self.side_queued = 0
        self.side_settled = 0
        """Side writes given so far, and those sent (or fallen back): in order."""
        self.waiting: dict[int, Mirrored] = {}
        """Streams with events for the next tick."""
        self.tick_at: float | None = None
        """When (monotonic) the waiting streams are written: :data:`BATCH_SECONDS` after the
        first of them (None: none waits)."""
        self.synced_ms = 0
        self.first_beat_ms = 0
        """When this worker first registered in Redis (0: not yet)."""
        self.beat_at = float("-inf")
        """When (monotonic) Redis last renewed this worker's lease."""
        self._starting: list[int] = []
        self._wake = Event()
        self._append = store.script(_APPEND)
        self._heartbeat = store.script(_HEARTBEAT)
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

    def track(self, event_log: EventLog, owner: str, listed: Listed | None = None) -> None:
        """Mirror this stream from now on (its events reach the mirror via :meth:`on_append`),
        and list it among its owner's streams (``listed``) with its first write."""
        entry = Mirrored(event_log, owner, listed)
        self.streams[event_log.stream_id] = entry
        # Until its keys are in Redis, this worker's synced time stays at or below its id: a
        # reader elsewhere is told "cannot tell yet" (and asks again), never "unknown".
        self._schedule(entry, min(now_ms(), event_log.stream_id))

    def on_append(self, event_log: EventLog, _seq: int, _frame: bytes, final: bool) -> None:
        """EventLog hook: the stream has more to write. Its end is written at once (the
        response ends when it is); the rest at the next tick, many events per write."""
        entry = self.streams.get(event_log.stream_id)
        if entry is None:
            return
        if final:
            entry.ended_at = time.monotonic()
            self._urge(entry)
        elif entry.dirty_ms is None:
            self._schedule(entry, now_ms())

    def wait_written(self, stream_id: int, timeout: float) -> bool:
        """Block until the stream's terminal event is in Redis, and the side writes given
        before this call were sent (False after ``timeout``: Redis slow or away; the writer
        goes on trying, in order, as always)."""
        deadline = time.monotonic() + timeout
        side = self.side_queued
        while True:
            entry = self.streams.get(stream_id)
            if (entry is None or entry.done) and self.side_settled >= side:
                return True
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(FLUSH_SECONDS)

    def also(self, write: SideWrite) -> None:
        """Send ``write`` with the next urgent pipeline (within :data:`FLUSH_SECONDS`)."""
        self.side.append(write)
        self.side_queued += 1
        self._wake.set()

    def forget(self, stream_id: int) -> None:
        """The registry dropped the stream (its TTL or the memory cap): stop keeping it."""
        self.streams.pop(stream_id, None)
        self.urgent.pop(stream_id, None)
        self.waiting.pop(stream_id, None)

    def _urge(self, entry: Mirrored) -> None:
        if entry.dirty_ms is None:
            entry.dirty_ms = now_ms()
        self.urgent[entry.log.stream_id] = entry
        self._wake.set()

    def _schedule(self, entry: Mirrored, since_ms: int) -> None:
        """For the next tick: one pipeline writes every waiting stream (few pipelines a
        second however many streams, so Redis's cost per pipeline is shared)."""
        entry.dirty_ms = since_ms
        self.waiting[entry.log.stream_id] = entry
        if self.tick_at is None:
            self.tick_at = time.monotonic() + BATCH_SECONDS
            self._wake.set()  # the writer may be asleep until its next heartbeat

    # The writer ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer (and so the heartbeat) in this worker."""
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._write_forever)

    def _synced_now(self) -> int:
        """The time before which every event this worker appended is in Redis."""
        waiting = [e.dirty_ms for e in self.streams.values() if e.dirty_ms is not None]
        return min([now_ms(), *self._starting, *waiting])

    def _write_forever(self) -> None:
        """Write what is due, one pipeline at a time; heartbeat every second meanwhile."""
        failures = 0
        next_beat = 0.0
        while True:
            if time.monotonic() >= next_beat:
                beat = self._beat()
                next_beat = time.monotonic() + (HEARTBEAT_SECONDS if beat else BACKOFF_SECONDS[-1])
            self._wake.clear()
            batch = self._take_due()
            if batch or self.side:
                if self._flush(batch):
                    failures = 0
                else:
                    gevent.sleep(BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)])
                    failures += 1
                continue
            self._wake.wait(max(0.0, min(next_beat, self._next_due()) - time.monotonic()))
            if self.urgent or self.side:
                gevent.sleep(FLUSH_SECONDS)  # let a burst of starts and ends gather

    def _take_due(self) -> list[Mirrored]:
        """The urgent streams, and at the tick every waiting one."""
        batch, self.urgent = self.urgent, {}
        if self.tick_at is not None and self.tick_at <= time.monotonic() + FLUSH_SECONDS:
            batch.update(self.waiting)
            self.waiting, self.tick_at = {}, None
        return [entry for stream_id, entry in batch.items() if stream_id in self.streams]

    def _next_due(self) -> float:
        if self.urgent or self.side:
            return 0.0
        return float("inf") if self.tick_at is None else self.tick_at

    def _beat(self) -> bool:
        """Renew this worker's lease; when Redis had forgotten it, check every stream. A lease
        that lapsed counts as forgotten: the script drops lapsed leases, this worker's too, before
        it adds this one (a reader elsewhere may have ended one of its streams meanwhile)."""
        if self.store.open:
            return False
        self.synced_ms = max(self.synced_ms, self._synced_now())
        beat_ms, began = now_ms(), time.monotonic()
        try:
            forgotten = self._heartbeat(
                [keys.WORKERS, keys.SYNCED, keys.BOOT],
                [self.worker_id, beat_ms, self.lease_ms, self.synced_ms],
                client=self.store.background)
        except OUTAGE_ERRORS as error:
            self.store.failed(error)
            return False
        self.store.succeeded(began)
        self.beat_at = began
        self.first_beat_ms = self.first_beat_ms or beat_ms
        if forgotten:
            self._expire()
            for entry in self.streams.values():  # each write answers what Redis really holds
                entry.checked = entry.list_due = True
                self._urge(entry)
        return True

    def _lease_held(self) -> bool:
        """Whether this worker's lease surely has not lapsed: then no reader elsewhere can
        have ended one of its streams as an orphan, and plain writes are safe."""
        return (time.monotonic() - self.beat_at) * 2000 < self.lease_ms

    def _expire(self) -> None:
        """Stop keeping finished streams whose events Redis no longer keeps either."""
        cutoff = time.monotonic() - self.ttl_ms / 1000
        for stream_id, entry in list(self.streams.items()):
            if entry.ended_at is not None and entry.ended_at < cutoff:
                self.forget(stream_id)

    def _flush(self, batch: list[Mirrored]) -> bool:
        """One pipeline for the streams in ``batch`` and the side writes; False when Redis did
        not answer."""
        side, self.side = self.side, []
        try:
            return self._send(batch, side)
        finally:
            self.side_settled += len(side)

    def _send(self, batch: list[Mirrored], side: list[SideWrite]) -> bool:
        if self.store.open:
            self._redo(batch)
            _failed(side)
            return False
        began = time.monotonic()
        try:
            pipe = self.store.background.pipeline(transaction=False)
            lease_held = self._lease_held()
            writes = [self._queue(pipe, entry, lease_held) for entry in batch]
            side_commands = sum(write.queue(pipe) for write in side)
            listings = [entry for entry in batch if entry.listed is not None and entry.list_due]
            for entry in listings:
                self._list(pipe, entry)
            if not side_commands and not listings and not any(w.commands for w in writes):
                for write in writes:
                    self._settle(write, [])
                return True
            replies = pipe.execute(raise_on_error=False)
        except OUTAGE_ERRORS as error:
            self.store.failed(error)
            self._redo(batch)
            _failed(side)
            return False
        self.store.succeeded(began)
        refused = False
        for write in writes:
            mine, replies = replies[:write.commands], replies[write.commands:]
            refused = not self._settle(write, mine) or refused
        for reply in replies:  # the side writes' and the listings'
            if isinstance(reply, Exception):  # a bug, not an outage
                log.error("Redis refused a write sent with the mirror's: %s", reply)
        for entry in listings:
            entry.list_due = False
        return not refused

    def _list(self, pipe: redis.client.Pipeline, entry: Mirrored) -> None:
        """Add the stream to its owner's index (``keys.listed``), which lives as long as the
        longest-lived of its members' events: each write sets it to the running TTL."""
        assert entry.listed is not None
        index = keys.listed(entry.owner)
        pipe.zadd(index, {entry.listed.encode(): entry.listed.started_ms})
        pipe.zremrangebyrank(index, 0, -keys.LISTED_KEEP - 1)
        pipe.pexpire(index, self.running_ttl_ms)

    def _redo(self, batch: list[Mirrored]) -> None:
        """Write these again, checked: a write that timed out may have landed all the same."""
        for entry in batch:
            if entry.log.stream_id in self.streams:
                entry.checked = True
                self._urge(entry)

    def _queue(self, pipe: redis.client.Pipeline, entry: Mirrored, lease_held: bool) -> _Write:
        """Queue one stream's unwritten events (at most :data:`MAX_FRAMES_PER_WRITE`)."""
        event_log = entry.log
        first = entry.written + 1
        if entry.done and not entry.checked:
            return _Write(entry, "none", entry.written)
        gap = first < event_log.base  # the log's cap dropped them before Redis took them
        if gap:
            first = event_log.base
        blob, lengths = event_log.span(first, MAX_FRAMES_PER_WRITE)
        last = first + len(lengths) - 1
        final = bool(lengths) and event_log.ended and last + 1 == event_log.next_seq
        if entry.checked or gap or (entry.created and not lease_held):
            self._checked(pipe, entry, first, last, gap, final, blob, lengths)
            return _Write(entry, "checked", last, 1)
        if not lengths:
            return _Write(entry, "none", entry.written)
        fields = _entry_fields(first, blob, lengths, final)
        key, sid = keys.events(event_log.stream_id), event_log.stream_id
        keep_from = last + 1 - self.max_events  # MINID only once there is something to trim
        pipe.xadd(key, fields, id=f"{sid}-{last}", nomkstream=entry.created,
                  minid=f"{sid}-{keep_from}" if keep_from > 0 else None)
        commands = 1
        if not entry.created or final or time.monotonic() >= entry.refresh_at:
            ttl = self._ttl_ms(entry)
            pipe.pexpire(key, ttl)
            pipe.set(keys.record(sid), keys.record_value(entry.owner, self.worker_id), px=ttl)
            # The owner's index outlives every member's events (see _list).
            pipe.pexpire(keys.listed(entry.owner), self.running_ttl_ms)
            commands += 3
        return _Write(entry, "append" if entry.created else "create", last, commands)

    def _checked(self, pipe: redis.client.Pipeline, entry: Mirrored, first: int, last: int,
                 gap: bool, final: bool, blob: bytes, lengths: list[int]) -> None:
        sid = entry.log.stream_id
        self._append.queue(pipe, [keys.events(sid), keys.record(sid)],
                           [sid, first, last, int(gap), self._ttl_ms(entry),
                            keys.record_value(entry.owner, self.worker_id),
                            max(0, last + 1 - self.max_events), int(final), blob,
                            _lengths(lengths) or ""])

    def _next_refresh(self) -> float:
        """When a running stream's expiries are renewed next: at a third of their TTL."""
        return time.monotonic() + self.running_ttl_ms / 3000

    def _ttl_ms(self, entry: Mirrored) -> int:
        if entry.ended_at is None:
            return self.running_ttl_ms
        left = self.ttl_ms - (time.monotonic() - entry.ended_at) * 1000
        return max(1000, int(left))

    def _settle(self, write: _Write, replies: list[object]) -> bool:
        """Record what Redis holds now and schedule what is left; False when Redis refused a
        checked write outright (a bug: the writer backs off instead of spinning)."""
        entry = write.entry
        if write.kind == "checked":
            reply = replies[0]
            if isinstance(reply, Exception):
                log.error("Redis refused the mirror's checked write: %s", reply)
                self._redo([entry])
                return False
            top, status = (int(x) for x in reply)  # type: ignore[attr-defined]
            entry.written, entry.created = top, True
            entry.checked = status == 2
            entry.refresh_at = self._next_refresh()
            entry.done = status == 1  # else: written to its end below, or Redis lost some
        elif write.kind in ("create", "append"):
            if isinstance(replies[0], Exception) or replies[0] is None:
                # At or below the top (a write that landed although its reply was lost), or
                # the stream is gone from Redis: let the script say what Redis holds.
                self._redo([entry])
                return True
            entry.written = write.last
            if len(replies) > 1:
                entry.refresh_at = self._next_refresh()
            entry.created = True
        if entry.log.ended and entry.written + 1 >= entry.log.next_seq:
            entry.done = True
        self._reschedule(entry, write.queued_ms)
        return True

    def _reschedule(self, entry: Mirrored, queued_ms: int) -> None:
        """Clean, or due again: at once when checking, catching up or ending."""
        if entry.log.stream_id not in self.streams or entry.log.stream_id in self.urgent:
            return
        more = not entry.done and entry.written + 1 < entry.log.next_seq
        if entry.checked or (more and entry.log.ended):
            self._urge(entry)
        elif more:
            behind = entry.log.next_seq - entry.written - 1
            if behind >= MAX_FRAMES_PER_WRITE:
                self._urge(entry)
            else:
                self._schedule(entry, queued_ms)
        else:
            entry.dirty_ms = None


def _lengths(lengths: list[int]) -> str | None:
    """An entry's ``n`` field: its frames' lengths, needed only when it holds several."""
    return ",".join(map(str, lengths)) if len(lengths) > 1 else None


def _failed(side: list[SideWrite]) -> None:
    for write in side:
        try:
            write.failed()
        except Exception:
            log.exception("a side write's fallback failed")


def _entry_fields(first: int, blob: bytes, lengths: list[int],
                  final: bool) -> dict[FieldT, EncodableT]:
    """A stream entry: the first position, the frames back to back, their lengths, the end."""
    fields: dict[FieldT, EncodableT] = {"s": first, "f": blob}
    if (joined := _lengths(lengths)) is not None:
        fields["n"] = joined
    if final:
        fields["t"] = "1"
    return fields
