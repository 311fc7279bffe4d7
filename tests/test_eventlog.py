"""The event log's caps: at most ``max_events`` events and ``max_bytes`` bytes are kept (the
oldest dropped, the newest always kept), and a live follower is never overtaken (``append``
waits instead)."""

from __future__ import annotations

import gevent
import pytest

from axrisi.stream.eventlog import EventLog, EventsDropped


def content(n: int, size: int = 10) -> dict[str, object]:
    return {"content": str(n) * size}


def test_take_is_read_joined() -> None:
    """A follower's one slice is exactly the frames from its position on."""
    log = EventLog(7)
    for n in range(5):
        log.append(content(n))
    for position in range(6):
        count, chunk = log.take(position)
        assert count == len(log.read(position))
        assert chunk == b"".join(log.read(position))


def test_the_oldest_events_past_the_count_are_dropped() -> None:
    log = EventLog(1, max_events=3)
    for n in range(5):
        log.append(content(n))
    assert (log.base, log.next_seq) == (2, 5)
    assert [frame.split(b"\n")[0] for frame in log.frames] == [b"id: 1-2", b"id: 1-3", b"id: 1-4"]
    with pytest.raises(EventsDropped):
        log.read(1)
    with pytest.raises(EventsDropped):
        log.take(0)


def test_the_oldest_events_past_the_bytes_are_dropped() -> None:
    log = EventLog(1, max_bytes=200)
    for n in range(20):
        log.append(content(n % 10, 30))
    assert 0 < log.size <= 200
    assert log.size == sum(len(frame) for frame in log.frames)
    assert log.next_seq == 20 and log.base > 0
    assert log.frames[-1].startswith(b"id: 1-19\n")


def test_the_newest_event_is_kept_even_past_the_bytes() -> None:
    log = EventLog(1, max_bytes=100)
    log.append(content(1))
    log.append(content(2, 500))
    assert log.base == 1
    assert len(log.frames) == 1 and log.size > 100


def test_the_buffer_does_not_grow_with_a_long_stream() -> None:
    """Dropped bytes are cut off the buffer (in halves, not per event)."""
    log = EventLog(1, max_bytes=1000)
    for n in range(10_000):
        log.append(content(n % 10, 20))
    assert len(log.buffer) <= 2 * 1000 + 100
    assert log.take(log.base)[1] == b"".join(log.frames)


@pytest.mark.parametrize("caps", [{"max_events": 3}, {"max_bytes": 150}])
def test_a_live_follower_is_not_overtaken(caps: dict[str, int]) -> None:
    """The generation waits while the slowest follower is a cap behind, and goes on once it
    catches up: nothing the follower has not taken is dropped."""
    log = EventLog(1, **caps)
    cursor = log.follow(0)
    writer = gevent.spawn(lambda: [log.append(content(n, 30)) for n in range(10)])
    gevent.sleep(0.05)
    assert not writer.dead, "append overtook a follower"
    taken = 0
    while not writer.dead or taken < log.next_seq:
        frames = log.read(taken)  # raises EventsDropped if anything was dropped under it
        taken += len(frames)
        log.advance(cursor, taken)
        gevent.sleep(0.001)
    assert taken == 10


def test_a_follower_that_leaves_releases_the_generation() -> None:
    log = EventLog(1, max_events=2)
    cursor = log.follow(0)
    writer = gevent.spawn(lambda: [log.append(content(n)) for n in range(5)])
    gevent.sleep(0.05)
    assert not writer.dead
    log.unfollow(cursor)
    writer.join(timeout=2)
    assert writer.dead and log.next_seq == 5


def test_span_is_the_frames_back_to_back() -> None:
    """What the mirror writes as one entry: the frames joined, and each one's length."""
    log = EventLog(7, max_events=5)
    for n in range(8):
        log.append({"content": "x" * n})
    frames = log.read(log.base)
    blob, lengths = log.span(log.base, 100)
    assert blob == b"".join(frames) and lengths == [len(f) for f in frames]
    blob, lengths = log.span(log.base + 1, 2)
    assert blob == b"".join(frames[1:3]) and len(lengths) == 2
    assert log.span(log.next_seq, 10) == (b"", [])
    with pytest.raises(EventsDropped):
        log.span(0, 1)
