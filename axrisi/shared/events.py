"""Resumable streams across processes: the reading side of the events mirrored to Redis.

A client whose reconnect lands on another worker or instance is served from the Redis stream
that :mod:`axrisi.shared.mirror` writes, one entry per flush whose id is the id of the last
event it holds (``<commandId>-<n>`` is a valid Redis stream id, and increases): ``XREAD`` from
the id the client last saw is the replay and the live tail in one loop, the first entry cut
where the client is (:func:`split_entry`).

What a reader can conclude, and what it cannot:

* **Unknown is not "cannot tell now".** A stream Redis does not know is ``404`` only when Redis
  answered and every live worker has written every stream it started before that id
  (``keys.SYNCED``), and Redis's dataset did not just restart empty while this worker was
  registered (its writers are still putting the streams back). Otherwise, and whenever Redis does
  not answer, :class:`CannotTell`: the API answers ``503`` with ``Retry-After``.
* **Never a hole.** Entries must arrive with consecutive positions; a gap (events the
  generating worker lost before it could write them) ends the reply with an ``internal`` error.
* **No reader waits forever.** When the generating worker's lease in ``keys.WORKERS`` lapsed
  (SIGKILL, OOM, a machine lost) on two looks some seconds apart, the reader ends the stream in
  Redis with an ``internal`` error event, atomically and only if nobody ended it first, so every
  reader gets the same terminal event. A Redis that stays unreachable longer than the lease ends
  the reply with an ``internal`` error too.

A follower attached through Redis marks the stream as attached (a key it keeps renewing), so
that the generating worker's grace timer does not cancel a stream that somebody reads elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import gevent
import redis
from redis.typing import XReadResponse

from .. import jsonutil
from ..stream import sse
from ..stream.ports import StreamLost
from . import keys
from .mirror import HEARTBEAT_SECONDS, EventMirror, now_ms
from .store import OUTAGE_ERRORS, SharedStore

log = logging.getLogger(__name__)

RESTART_WINDOW_MS = 5000
"""After Redis restarted empty, how long its writers get to put the streams back."""
ORPHAN_CONFIRM_SECONDS = 2 * HEARTBEAT_SECONDS
"""A lapsed lease must still be lapsed this much later (a worker renews every second)."""
PAST_END_WAIT_SECONDS = 3 * HEARTBEAT_SECONDS
UNSURE_PATIENCE_SECONDS = 1.0
LOST_MESSAGE = "The stream's events could not be read to its end; please start it again."


class PastTheEnd(Exception):
    """The position asked for is past the stream's events, as its worker has written them."""


class CannotTell(Exception):
    """Redis could not answer, or cannot know yet: the client should retry shortly."""


def _entries(reply: XReadResponse) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream ``XREAD`` reply. redis-py's type covers every reply shape and
    decoded strings; our clients (``store.redis_options``: the default shape, no
    ``decode_responses``) get ``[[key, [(id, {field: value}), ...]]]``, all bytes."""
    streams = cast("list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]", reply)
    return streams[0][1]


def seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.rpartition("-")[2])


def split_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[int, list[bytes]]:
    """A stream entry's first position and its frames (``mirror.py`` writes one entry per
    flush: the frames back to back in ``f``, their lengths in ``n`` when there are several)."""
    last = seq_of(entry_id)
    first = int(fields.get(b"s", last))
    blob, lengths = fields[b"f"], fields.get(b"n")
    if lengths is None:
        frames = [blob]
    else:
        frames, offset = [], 0
        for length in map(int, lengths.split(b",")):
            frames.append(blob[offset:offset + length])
            offset += length
    if len(frames) != last - first + 1:
        raise StreamLost("a malformed entry")
    return first, frames


_PROBE = """
local record = redis.call('GET', KEYS[1])
if not record then return {'missing'} end
local owner, worker = string.match(record, '^(%S+) (%S+)$')
if owner ~= ARGV[1] then return {'unknown'} end
local first, top, ended = 0, -1, 0
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #oldest > 0 then
  first = tonumber(string.match(oldest[1][1], '%-(%d+)$'))
  for i = 1, #oldest[1][2], 2 do
    if oldest[1][2][i] == 's' then first = tonumber(oldest[1][2][i + 1]) end
  end
end
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #newest > 0 then
  top = tonumber(string.match(newest[1][1], '%-(%d+)$'))
  for i = 1, #newest[1][2], 2 do
    if newest[1][2][i] == 't' then ended = 1 end
  end
end
return {'ok', first, top, ended, worker}
"""
"""What Redis knows of a stream, for this owner: {'ok', first, top, ended, worker}, 'unknown'
(another owner's), or 'missing' (no record). Its keys are the stream's (one hash slot)."""

_MISSING = """
local now = tonumber(ARGV[1])
local boot = redis.call('GET', KEYS[3])
if not boot then return 'unsure' end
boot = tonumber(boot)
if boot > tonumber(ARGV[3]) and now - boot < tonumber(ARGV[4]) then return 'unsure' end
local id = tonumber(ARGV[2])
if id <= now + 60000 then
  for _, worker in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
    if tonumber(redis.call('HGET', KEYS[2], worker) or '0') <= id then return 'unsure' end
  end
end
return 'unknown'
"""
"""A stream with no record: 'unknown' when every live worker has written every stream it
started before the id and the dataset is not freshly restarted, else 'unsure'. Its keys are the
deployment's (one hash slot)."""

_END_ORPHAN = """
local record = redis.call('GET', KEYS[2])
if not record then return 'unknown' end
if string.match(record, ' (%S+)$') ~= ARGV[5] then return 'moved' end
local top = -1
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest > 0 then
  top = tonumber(string.match(newest[1][1], '%-(%d+)$'))
  for i = 1, #newest[1][2], 2 do
    if newest[1][2][i] == 't' then return 'ended' end
  end
end
if ARGV[2] == '0' then return 'open' end
local id = ARGV[1] .. '-' .. (top + 1)
local frame = 'id: ' .. id .. '\\nevent: error\\ndata: ' .. ARGV[3] .. '\\n\\n'
redis.call('XADD', KEYS[1], id, 's', top + 1, 'f', frame, 't', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 'ended'
"""
"""A stream whose worker (ARGV[5]) lost its lease: 'ended', 'open', 'unknown', or 'moved' (the
record names another worker); with ARGV[2] = '1', end it with an error event unless it ended.
Its keys are the stream's (one hash slot): whether the worker is alive is asked before, apart."""


@dataclass
class RemoteStream:
    """What Redis holds of a stream that the caller owns."""

    first: int
    """The oldest kept position (0 while none is written yet)."""
    top: int
    """The newest position written (-1: none yet)."""
    ended: bool
    worker: str


class RedisEvents:
    """The Redis side of resumable streams for readers: look-ups and a blocking follower."""

    def __init__(self, store: SharedStore, mirror: EventMirror, ttl_seconds: int,
                 lease_seconds: float, block_seconds: float, quiet_seconds: float = 0.0) -> None:
        self.store = store
        self.quiet_seconds = quiet_seconds
        """How long Redis must have answered before "not attached" is believed (the grace)."""
        self.mirror = mirror
        self.ttl_ms = ttl_seconds * 1000
        self.lease_seconds = lease_seconds
        self.block_seconds = block_seconds
        self.reader = store.reader(block_seconds)
        self._probe = store.script(_PROBE)
        self._missing = store.script(_MISSING)
        self._end_orphan = store.script(_END_ORPHAN)

    # Look-ups before a reply starts -------------------------------------------------------------

    def probe(self, stream_id: int, owner: str) -> RemoteStream | None:
        """The stream, or None when Redis knows that this owner has no such stream.

        "Cannot tell yet" is usually a writer a few milliseconds behind (its client saw an event
        that the next flush carries): it is asked again for up to :data:`UNSURE_PATIENCE_SECONDS`
        before the caller gets :class:`CannotTell`. A Redis that does not answer is not waited on.
        """
        deadline = time.monotonic() + UNSURE_PATIENCE_SECONDS
        while True:
            reply = self._probe_once(stream_id, owner)
            verdict = reply[0].decode()
            if verdict != "unsure":
                break
            if time.monotonic() >= deadline:
                raise CannotTell()
            gevent.sleep(0.05)
        if verdict == "unknown":
            return None
        first, top, ended, worker = reply[1:]
        return RemoteStream(int(first), int(top), bool(ended), worker.decode())

    def _probe_once(self, stream_id: int, owner: str) -> list[Any]:
        """One look: the stream's own keys, then (only for a stream without a record) the
        deployment's, to tell "unknown" from "not written yet"."""
        try:
            reply = cast(list[Any], self._probe([keys.record(stream_id), keys.events(stream_id)],
                                                [owner]))
            if reply[0] == b"missing":
                reply = [self._missing(
                    [keys.WORKERS, keys.SYNCED, keys.BOOT],
                    [now_ms(), stream_id, self.mirror.first_beat_ms, RESTART_WINDOW_MS])]
        except OUTAGE_ERRORS as error:
            self.store.failed(error, check=True)
            raise CannotTell() from None
        self.store.succeeded()
        return reply

    def past_end(self, stream_id: int, owner: str, position: int,
                 stream: RemoteStream) -> RemoteStream:
        """``position`` is past what Redis holds: wait until the generating worker has written
        everything it had when we asked; then it is either there, or truly past the end
        (:class:`PastTheEnd`).
        """
        asked = now_ms()
        deadline = time.monotonic() + PAST_END_WAIT_SECONDS
        while position > stream.top + 1 and not stream.ended:
            if time.monotonic() > deadline:
                raise CannotTell()
            gevent.sleep(0.1)
            synced = self._synced(stream.worker)
            again = self.probe(stream_id, owner)
            if again is None:
                raise CannotTell()
            stream = again
            if synced is not None and int(synced) >= asked and position > stream.top + 1:
                break
        if position > stream.top + 1:
            raise PastTheEnd()
        return stream

    def _synced(self, worker: str) -> bytes | str | None:
        """The worker's ``synced`` time (ms) as Redis holds it; None: unknown or unreachable."""
        return self.store.run(lambda r: r.hget(keys.SYNCED, worker), lambda: None,
                              "resume_past_end")

    # Following a stream -------------------------------------------------------------------------

    def follow(self, stream_id: int, position: int, worker: str
               ) -> Iterator[list[bytes] | None]:
        """Batches of frames from ``position`` on; None after each block of silence.

        Ends after the terminal event; raises :class:`StreamLost` when the stream cannot be
        followed to its end (see the module's docstring).
        """
        key = keys.events(stream_id)
        last: bytes | str = f"{stream_id}-{position - 1}" if position > 0 else "0-0"
        watch = _OrphanWatch(self, stream_id, worker)
        unreachable_since: float | None = None
        while True:
            try:
                reply = self.reader.xread({key: last}, count=1000,
                                          block=max(1, int(self.block_seconds * 1000)))
            except OUTAGE_ERRORS:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > self.lease_seconds:
                    raise StreamLost("Redis unreachable") from None
                yield None
                gevent.sleep(0.2)
                continue
            unreachable_since = None
            if not reply:
                watch.check()
                yield None
                continue
            frames, ended = [], False
            for entry_id, fields in _entries(reply):
                first, batch = split_entry(entry_id, fields)
                if first > position:
                    raise StreamLost("a gap in the events")
                frames += batch[position - first:]
                position = first + len(batch)
                last = entry_id
                ended = ended or b"t" in fields
            watch.reset()
            yield frames
            if ended:
                return

    def kept(self, stream_id: int, position: int) -> list[bytes]:
        """The frames Redis keeps from ``position`` on, as they are now (a snapshot's catch-up:
        ``follow`` goes on after them); :class:`CannotTell` while Redis does not answer."""
        return self.store.run(lambda r: self._kept(r, stream_id, position), _cannot_tell,
                              "resume_snapshot")

    def _kept(self, client: redis.Redis, stream_id: int, position: int) -> list[bytes]:
        key, frames = keys.events(stream_id), []
        start = f"{stream_id}-{position}"  # the entry whose last event is the first one needed
        while True:
            entries = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                           client.xrange(key, min=start, count=1000))
            for entry_id, fields in entries:
                first, batch = split_entry(entry_id, fields)
                if first > position:
                    raise CannotTell()  # dropped meanwhile (the cap): let the client retry
                frames += batch[position - first:]
                position = first + len(batch)
            if len(entries) < 1000:
                return frames
            start = f"({entries[-1][0].decode()}"

    def end_orphan(self, stream_id: int, worker: str, write: bool) -> str:
        """'alive', 'ended', 'unknown', 'orphan' or 'unreachable'; with ``write``, end an
        orphan (→ 'ended'). Two looks in two hash slots: the worker's lease (with the stream's
        record, in one pipeline), and only for a lapsed lease the stream's own script."""
        return self.store.run(lambda r: self._look_at_worker(r, stream_id, worker, write),
                              lambda: "unreachable", "resume_orphan_check")

    def _look_at_worker(self, client: redis.Redis, stream_id: int, worker: str,
                        write: bool) -> str:
        pipe = client.pipeline(transaction=False)
        pipe.exists(keys.record(stream_id))
        pipe.zscore(keys.WORKERS, worker)
        recorded, lease = pipe.execute()
        if not recorded:
            return "unknown"
        if lease is not None and float(lease) >= now_ms():
            return "alive"
        if not write:
            return "orphan"
        data = jsonutil.dumps({"error": LOST_MESSAGE, "code": "internal",
                               "commandId": stream_id}).decode()
        reply = self._end_orphan([keys.events(stream_id), keys.record(stream_id)],
                                 [stream_id, int(write), data, self.ttl_ms, worker],
                                 client=client)
        state = reply.decode() if isinstance(reply, bytes) else str(reply)
        return "alive" if state == "moved" else state

    def lost_frame(self, stream_id: int, position: int) -> bytes:
        """The terminal event a reader gets when the stream cannot be followed to its end."""
        return sse.event(f"{stream_id}-{position}",
                         {"error": LOST_MESSAGE, "code": "internal", "commandId": stream_id},
                         "error")

    # Attachment, for the generating worker's grace -----------------------------------------------

    def mark_attached(self, stream_id: int, seconds: float) -> None:
        """Tell the generating worker that a client reads this stream through Redis."""
        self.store.run(lambda r: r.set(keys.attached(stream_id), 1,
                                       px=max(1000, int(seconds * 1000))), lambda: None,
                       "resume_attach")

    def clear_attached(self, stream_id: int) -> None:
        self.store.run(lambda r: r.delete(keys.attached(stream_id)), lambda: None,
                       "resume_detach")

    def is_attached(self, stream_id: int) -> bool | None:
        """Whether a reader elsewhere follows the stream; None when nobody can tell: Redis does
        not answer, or did not for a while within the last ``quiet_seconds`` (a reader who came
        back meanwhile got 503s and may not have attached yet). An outage never cancels a
        stream that somebody may be reading."""
        attached = self.store.run(lambda r: r.exists(keys.attached(stream_id)), lambda: None,
                                  "resume_is_attached")
        if attached:
            return True
        if attached is None or self.store.troubled_within(self.quiet_seconds):
            return None
        return False


class _OrphanWatch:
    """A follower's look at the generating worker during silences: two looks, then the end."""

    def __init__(self, events: RedisEvents, stream_id: int, worker: str) -> None:
        self.events = events
        self.stream_id = stream_id
        self.worker = worker
        self.orphan_since: float | None = None
        self.unknown_since: float | None = None

    def reset(self) -> None:
        self.orphan_since = self.unknown_since = None

    def check(self) -> None:
        """Raise :class:`StreamLost` once the stream is orphaned for good; else return."""
        now = time.monotonic()
        confirmed = self.orphan_since is not None and \
            now - self.orphan_since >= ORPHAN_CONFIRM_SECONDS
        state = self.events.end_orphan(self.stream_id, self.worker, write=confirmed)
        if state == "orphan":
            self.orphan_since = self.orphan_since or now
        elif state == "unknown":
            # Redis lost the stream (a restart) and its worker has not written it back.
            self.unknown_since = self.unknown_since or now
            if now - self.unknown_since > self.events.lease_seconds:
                raise StreamLost("the stream is gone from Redis")
        elif state != "ended":
            self.reset()


def _cannot_tell() -> list[bytes]:
    raise CannotTell()
