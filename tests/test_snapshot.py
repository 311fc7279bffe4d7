"""Folding kept events into one snapshot event (``?catchup=snapshot``)."""

from __future__ import annotations

from axrisi.stream import sse
from axrisi.stream.snapshot import fold


def frames(*events: tuple[dict, str | None]) -> list[bytes]:
    return [sse.event(f"7-{n}", data, name) for n, (data, name) in enumerate(events)]


STREAM = frames(({"title": "T", "commandId": 7}, None),
                ({"reasoning": "hm", "commandId": 7}, None),
                ({"content": "a", "commandId": 7}, None),
                ({"content": "b\n", "commandId": 7}, None),
                ({"done": True, "commandId": 7}, None))


def test_everything_but_the_end_folds_into_one_event_with_the_last_id() -> None:
    event, covered = fold(7, STREAM)
    assert covered == 4
    assert sse.parse(event) == ("7-3", None, {"snapshot": {"title": "T", "content": "ab\n",
                                                           "reasoning": "hm"},
                                              "commandId": 7})


def test_from_mid_answer_there_is_no_title() -> None:
    event, covered = fold(7, STREAM[3:])
    assert covered == 1
    assert sse.parse(event)[2] == {"snapshot": {"content": "b\n"}, "commandId": 7}


def test_nothing_to_fold_before_the_end_or_an_error() -> None:
    assert fold(7, STREAM[4:]) == (b"", 0)
    assert fold(7, []) == (b"", 0)
    failed = frames(({"title": "T", "commandId": 7}, None),
                    ({"error": "x", "code": "cancelled", "commandId": 7}, "error"))
    event, covered = fold(7, failed)
    assert covered == 1 and sse.parse(event)[2]["snapshot"] == {"title": "T", "content": ""}


def test_reasoning_alone_is_not_a_snapshot() -> None:
    assert fold(7, STREAM[1:2]) == (b"", 0)


def test_an_event_it_does_not_know_ends_the_fold() -> None:
    """A kind of event added later is replayed as it is, never folded away."""
    stream = frames(({"title": "T", "commandId": 7}, None),
                    ({"content": "a", "commandId": 7}, None),
                    ({"tool": "x", "commandId": 7}, None),
                    ({"content": "b", "commandId": 7}, None))
    event, covered = fold(7, stream)
    assert covered == 2 and sse.parse(event)[0] == "7-1"
