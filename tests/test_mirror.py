"""The event mirror against a real redis-server: one entry per flush, read back exactly from every
position, and every write that Redis may or may not hold checked rather than repeated.

The writer's rounds are driven by hand (the heartbeat, then what is due), so that each test says
exactly which events one flush carries; the writer greenlet itself runs in the e2e suite.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
import redis

from axrisi.shared import keys
from axrisi.shared import mirror as mirror_module
from axrisi.shared.events import RedisEvents
from axrisi.shared.mirror import EventMirror, SideWrite
from axrisi.shared.store import SharedStore
from axrisi.stream.eventlog import EventLog
from tests.e2e.faultproxy import FaultProxy
from tests.e2e.redis_server import RedisServer

OWNER = "owner-key"
STREAM_IDS = itertools.count(int(time.time() * 1000))
"""Ids no other test used on the module's Redis."""


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(autouse=True)
def no_batching_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything appended is due at the next round (the rounds are the tests' own)."""
    monkeypatch.setattr(mirror_module, "BATCH_SECONDS", 0.0)


class Rig:
    """A mirror and a reader on one Redis, with the writer's rounds driven by the test."""

    def __init__(self, url: str, max_events: int = 10_000) -> None:
        self.store = SharedStore(url)
        self.mirror = EventMirror(self.store, ttl_seconds=300, running_ttl_seconds=120,
                                  max_events=max_events, lease_seconds=60)
        self.events = RedisEvents(self.store, self.mirror, 300, lease_seconds=60,
                                  block_seconds=0.05)
    def new_log(self, max_events: int = 10_000) -> EventLog:
        with self.mirror.starting():
            event_log = EventLog(next(STREAM_IDS), max_events, self.mirror.on_append)
            self.mirror.track(event_log, OWNER)
        return event_log

    def round(self) -> bool:
        """One round of the writer: the heartbeat, then one pipeline of what is due."""
        self.mirror._beat()
        batch = self.mirror._take_due()
        return self.mirror._flush(batch) if batch else True

    def read(self, stream_id: int, position: int) -> list[bytes]:
        """The frames a reader elsewhere gets from ``position`` (until a silence or the end)."""
        frames: list[bytes] = []
        for batch in self.events.follow(stream_id, position, self.mirror.worker_id):
            if batch is None:
                break
            frames += batch
        return frames


def append(event_log: EventLog, count: int, final: bool = False) -> None:
    for _ in range(count):
        event_log.append({"content": f"token {event_log.next_seq} "})
    if final:
        event_log.append({"done": True}, final=True)


def commands(client: redis.Redis) -> dict[str, int]:
    """Redis's own count of calls per command (scripts' inner commands included)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items()
            if n != before.get(k, 0) and k != "info"}  # the INFO that read the counts


def test_every_position_reads_back_exactly(redis_server: RedisServer) -> None:
    """Several events per entry; a reader from any position gets exactly the rest, once."""
    rig = Rig(redis_server.url)
    event_log = rig.new_log()
    event_log.append({"title": "t"})
    assert rig.round()
    for chunk in (1, 5, 3, 7, 2):
        append(event_log, chunk)
        assert rig.round()
    append(event_log, 4, final=True)
    assert rig.round()
    frames = event_log.frames
    assert redis_server.client().xlen(keys.events(event_log.stream_id)) == 7 < len(frames)
    for position in range(len(frames)):
        assert rig.read(event_log.stream_id, position) == frames[position:], position
    assert rig.mirror.streams[event_log.stream_id].done


def test_a_flush_is_one_xadd_and_expiries_are_set_at_start_and_end(
        redis_server: RedisServer) -> None:
    """Between a stream's first write and its end, each flush costs Redis one plain XADD."""
    rig = Rig(redis_server.url)
    event_log = rig.new_log()
    event_log.append({"title": "t"})
    assert rig.round()
    rig.round()  # the heartbeat's own script runs here, outside the window
    client = redis_server.client()
    before = commands(client)
    append(event_log, 50)
    assert rig.mirror._flush(rig.mirror._take_due())  # no heartbeat in between
    middle = delta(before, commands(client))
    for _ in range(9):
        append(event_log, 5)
        assert rig.mirror._flush(rig.mirror._take_due())
    append(event_log, 1, final=True)
    assert rig.mirror._flush(rig.mirror._take_due())
    spent = delta(before, commands(client))
    assert middle == {"xadd": 1}
    # At the end: the events' and the owner's list's expiries, and the record (SET with PX).
    assert spent == {"xadd": 11, "pexpire": 2, "set": 1}, spent
    assert client.pttl(keys.events(event_log.stream_id)) > 200_000
    assert client.get(keys.record(event_log.stream_id)) == \
        f"{OWNER} {rig.mirror.worker_id}".encode()
    assert rig.read(event_log.stream_id, 0) == event_log.frames


def test_a_write_redis_may_hold_is_checked_not_repeated(redis_server: RedisServer) -> None:
    """A pipeline that timed out may have landed: the next write of those streams goes
    through the checked script, which starts right above what Redis holds."""
    with FaultProxy(redis_server.port) as proxy:
        rig = Rig(proxy.url)
        event_log = rig.new_log()
        event_log.append({"title": "t"})
        assert rig.round()
        append(event_log, 3)
        proxy.stall(mirror_module.BACKOFF_SECONDS[-1] + 2.5)  # past the write deadline
        assert not rig.mirror._flush(rig.mirror._take_due())
        entry = rig.mirror.streams[event_log.stream_id]
        assert entry.checked
        proxy.heal()
        rig.store._down_until = 0.0  # the breaker's pause is not what this test is about
        append(event_log, 2, final=True)
        for _ in range(3):  # at most: checked (answers the top), checked (the rest)
            assert rig.round()
        assert not entry.checked and entry.done
        assert rig.read(event_log.stream_id, 0) == event_log.frames


def test_a_rewound_writer_never_duplicates_events(redis_server: RedisServer) -> None:
    """A write repeated with the same events (a reply lost, a reconnect's retry) is refused by
    Redis itself (its id is not above the top) and checked; should the writer ever send events
    Redis already holds among new ones, readers take each position once all the same."""
    rig = Rig(redis_server.url)
    event_log = rig.new_log()
    event_log.append({"title": "t"})
    append(event_log, 4)
    assert rig.round()
    entry = rig.mirror.streams[event_log.stream_id]
    entry.written = 1  # as if the reply of the last write had been lost
    rig.mirror._urge(entry)
    assert rig.round()
    assert entry.checked  # refused: the same id as Redis's top
    while entry.checked:
        assert rig.round()
    assert entry.written == 4
    entry.written = 2  # again, now with new events after those Redis holds
    append(event_log, 3)
    append(event_log, 1, final=True)
    while not entry.done:
        assert rig.round()
    frames = event_log.frames
    for position in range(len(frames)):
        assert rig.read(event_log.stream_id, position) == frames[position:], position


def test_a_stream_redis_lost_is_written_again_whole(redis_server: RedisServer) -> None:
    """A stream key gone from Redis (evicted, or a restart) is not half re-created by a plain
    XADD (NOMKSTREAM): the checked write puts back everything the log still holds."""
    rig = Rig(redis_server.url)
    event_log = rig.new_log()
    event_log.append({"title": "t"})
    append(event_log, 5)
    assert rig.round()
    redis_server.client().delete(keys.events(event_log.stream_id))
    append(event_log, 2)
    entry = rig.mirror.streams[event_log.stream_id]
    for _ in range(4):
        assert rig.round()
    assert not entry.checked and entry.written == event_log.next_seq - 1
    assert rig.read(event_log.stream_id, 0) == event_log.frames


def test_after_a_restart_every_kept_stream_is_written_back(redis_server: RedisServer) -> None:
    """Redis restarted empty: the heartbeat learns it was forgotten, and the checked writes
    rewrite every stream the worker keeps, finished ones included."""
    with RedisServer() as own:
        rig = Rig(own.url)
        finished, running = rig.new_log(), rig.new_log()
        for event_log in (finished, running):
            event_log.append({"title": "t"})
            append(event_log, 6)
        append(finished, 1, final=True)
        assert rig.round()
        own.restart()
        rig.store._down_until = 0.0
        append(running, 2)
        for _ in range(6):
            rig.round()
        assert rig.read(finished.stream_id, 0) == finished.frames
        assert rig.read(running.stream_id, 3) == running.frames[3:]


def ended_as_an_orphan(redis_server: RedisServer) -> tuple[Rig, EventLog, redis.Redis]:
    """A stream written to Redis, whose worker's lease then lapsed, ended by a reader elsewhere
    with the orphan's terminal event."""
    rig = Rig(redis_server.url)
    event_log = rig.new_log()
    event_log.append({"title": "t"})
    append(event_log, 2)
    assert rig.round()
    client = redis_server.client()
    client.zadd(keys.WORKERS, {rig.mirror.worker_id: 1})  # the lease lapsed
    assert rig.events.end_orphan(event_log.stream_id, rig.mirror.worker_id, write=True) == "ended"
    return rig, event_log, client


def test_a_stream_ended_as_an_orphan_gets_nothing_after_its_end(
        redis_server: RedisServer) -> None:
    """A reader elsewhere ended the stream when this worker's lease lapsed: the worker, back,
    writes checked (its lease is not sure) and stops at that terminal event."""
    rig, event_log, client = ended_as_an_orphan(redis_server)
    rig.mirror.beat_at = float("-inf")  # the worker was away as long
    append(event_log, 3)
    batch = rig.mirror._take_due()
    assert rig.mirror._flush(batch)
    assert rig.mirror.streams[event_log.stream_id].done
    read = rig.read(event_log.stream_id, 0)
    assert read[:3] == event_log.frames[:3]
    assert len(read) == 4 and b"event: error" in read[3]


def test_the_cap_keeps_the_newest_events(redis_server: RedisServer) -> None:
    """Past AXRISI_RESUME_MAX_EVENTS, Redis drops whole old entries (MINID); the reader's
    first position says where the kept events start."""
    rig = Rig(redis_server.url, max_events=10)
    event_log = rig.new_log()
    event_log.append({"title": "t"})
    for _ in range(300):
        append(event_log, 1)
        assert rig.round()
    append(event_log, 1, final=True)
    assert rig.round()
    probe = rig.events.probe(event_log.stream_id, OWNER)
    assert probe is not None and probe.ended and probe.top == event_log.next_seq - 1
    assert 0 < probe.first <= probe.top - 9
    kept = rig.read(event_log.stream_id, probe.first)
    assert kept == event_log.frames[probe.first:]


def test_side_writes_ride_with_the_terminal_event(redis_server: RedisServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream's end and the commands given to ``also`` (its slot, its tokens) go to Redis in
    one pipeline; when Redis does not answer, their fallback runs instead."""
    rig = Rig(redis_server.url)
    event_log = rig.new_log()
    event_log.append({"title": "t"})
    append(event_log, 3)
    assert rig.round()
    pipelines: list[int] = []
    real = rig.store.background.pipeline

    def counted(*args: object, **kwargs: object) -> redis.client.Pipeline:
        pipelines.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rig.store.background, "pipeline", counted)
    client = redis_server.client()
    client.sadd("side-test", "held")
    fell_back: list[str] = []
    append(event_log, 1, final=True)
    rig.mirror.also(SideWrite(lambda pipe: len([pipe.srem("side-test", "held")]),
                              lambda: fell_back.append("srem")))
    assert rig.mirror._flush(rig.mirror._take_due())
    assert pipelines == [1] and client.scard("side-test") == 0 and not fell_back
    assert rig.mirror.streams[event_log.stream_id].done
    with FaultProxy(redis_server.port) as proxy:
        stalled = Rig(proxy.url)
        stalled.mirror.also(SideWrite(lambda pipe: len([pipe.sadd("side-test", "x")]),
                                      lambda: fell_back.append("sadd")))
        proxy.stall(3.0)
        assert not stalled.mirror._flush(stalled.mirror._take_due())
        assert fell_back == ["sadd"] and not stalled.mirror.side


def test_a_worker_back_after_its_lease_lapsed_writes_nothing_after_an_orphans_end(
        redis_server: RedisServer) -> None:
    """The worker's own heartbeat, the first thing it does when back, finds its lapsed lease
    dropped (Redis forgot it), so its next write is checked and stops at the terminal event a
    reader elsewhere wrote meanwhile: the stream's newest entry stays that end."""
    rig, event_log, client = ended_as_an_orphan(redis_server)
    append(event_log, 3)
    for _ in range(3):
        rig.round()  # heartbeat first, then the writes
    assert rig.mirror.streams[event_log.stream_id].done
    [(_entry_id, newest)] = client.xrevrange(keys.events(event_log.stream_id), count=1)
    assert newest[b"t"] == b"1" and b"event: error" in newest[b"f"]
