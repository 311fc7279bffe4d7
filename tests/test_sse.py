"""Unit tests for the SSE wire format (axrisi/stream/sse.py): a table of inputs and exact bytes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from axrisi.stream import sse


def parse_frame(frame: bytes) -> list[tuple[str, str]]:
    """Read one frame the way the HTML standard's parser does: its (field, value) lines.

    Lines end at CR, LF or CRLF; a line starting with ':' is a comment; one space after the
    colon is dropped. The frame must end with exactly one blank line and contain no other.
    """
    text = frame.decode("utf-8")
    lines = re.split(r"\r\n|\r|\n", text)
    assert lines[-2:] == ["", ""], f"frame does not end with a blank line: {frame!r}"
    body = lines[:-2]
    assert "" not in body, f"frame holds a blank line that would end the event early: {frame!r}"
    fields = []
    for line in body:
        name, _, value = line.partition(":")
        fields.append((name, value.removeprefix(" ")))
    return fields


def data_of(frame: bytes) -> Any:
    """The JSON value of a frame's single data line (asserting there is exactly one)."""
    data_lines = [value for name, value in parse_frame(frame) if name == "data"]
    assert len(data_lines) == 1, f"expected one data line in {frame!r}"
    return json.loads(data_lines[0])


EVENT_CASES = [
    pytest.param(
        "1749186088941-0", {"title": "Summary of X", "commandId": 1749186088941}, None,
        b'id: 1749186088941-0\ndata: {"title":"Summary of X","commandId":1749186088941}\n\n',
        id="id-and-data",
    ),
    pytest.param(
        "7-3", {"error": "The model service failed.", "code": "upstream_error", "commandId": 7},
        "error",
        b'id: 7-3\nevent: error\n'
        b'data: {"error":"The model service failed.","code":"upstream_error","commandId":7}\n\n',
        id="with-event-name",
    ),
    pytest.param(
        "7-1", {"done": True, "finishReason": "stop", "usage": None}, None,
        b'id: 7-1\ndata: {"done":true,"finishReason":"stop","usage":null}\n\n',
        id="literals",
    ),
    pytest.param(
        "7-1", {"content": "h\u00e9llo w\u00f6rld \u2014 \u4e2d\u6587"}, None,
        b'id: 7-1\ndata: {"content":"'
        + "h\u00e9llo w\u00f6rld \u2014 \u4e2d\u6587".encode()
        + b'"}\n\n',
        id="unicode-raw-utf8",
    ),
    pytest.param(
        "7-1", {"content": "\U0001f44b\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467"},
        None,
        b'id: 7-1\ndata: {"content":"'
        + "\U0001f44b\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467".encode()
        + b'"}\n\n',
        id="emoji",
    ),
    pytest.param(
        "7-1", {"content": "line one\nline two"}, None,
        b'id: 7-1\ndata: {"content":"line one\\nline two"}\n\n',
        id="newline-escaped",
    ),
    pytest.param(
        "7-1", {"content": "a\rb\r\nc"}, None,
        b'id: 7-1\ndata: {"content":"a\\rb\\r\\nc"}\n\n',
        id="cr-and-crlf-escaped",
    ),
    pytest.param(
        "7-1", {"content": "\n\ndata: injected\n\nid: 9-9\nevent: error\n\n"}, None,
        b'id: 7-1\ndata: {"content":"\\n\\ndata: injected\\n\\nid: 9-9\\nevent: error\\n\\n"}\n\n',
        id="field-lookalikes-and-blank-lines",
    ),
    pytest.param(
        "7-1", {"content": ": ping"}, None,
        b'id: 7-1\ndata: {"content":": ping"}\n\n',
        id="comment-lookalike",
    ),
    pytest.param(
        "1-\r\n2\r", {"a": 1}, "err\nor\r",
        b'id: 1-2\nevent: error\ndata: {"a":1}\n\n',
        id="line-breaks-stripped-from-id-and-name",
    ),
    pytest.param(
        "1-0", {"a": 1}, "",
        b'id: 1-0\ndata: {"a":1}\n\n',
        id="empty-name-means-no-event-line",
    ),
]


@pytest.mark.parametrize(("event_id", "data", "name", "expected"), EVENT_CASES)
def test_event_bytes(event_id: str, data: Any, name: str | None, expected: bytes) -> None:
    """event() produces exactly the id/event/data/blank-line bytes of the table."""
    assert sse.event(event_id, data, name) == expected


ROUND_TRIP_VALUES = [
    pytest.param({"content": "plain"}, id="plain"),
    pytest.param({"content": "\u00fcn\u00efc\u00f6d\u00e9 \u65e5\u672c\u8a9e"}, id="unicode"),
    pytest.param({"content": "\U0001f600\U0001f525\U0001f44d\U0001f3fb"}, id="emoji"),
    pytest.param({"content": "a\nb\n\nc\n"}, id="newlines-and-blank-lines"),
    pytest.param({"content": "a\rb\r\rc\r\n\r\n"}, id="carriage-returns"),
    pytest.param({"content": "x\n\ndata: {\"done\":true}\n\n"}, id="data-inside"),
    pytest.param({"content": "sep\u2028para\u2029nel\u0085end"}, id="unicode-separators"),
    pytest.param({"content": "tab\tnul\u0000bell\u0007"}, id="control-chars"),
    pytest.param({"content": "\"quoted\" \\ back\\slash /"}, id="quotes-and-backslashes"),
    pytest.param({"nested": {"list": ["a\nb", 1, 2.5, None, True], "e": {}}}, id="nested"),
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
def test_data_is_one_line_that_parses_back(value: Any) -> None:
    """Whatever the strings hold, the frame has exactly one data line whose JSON is the value."""
    frame = sse.event("5-1", value)
    fields = parse_frame(frame)
    assert [name for name, _ in fields] == ["id", "data"]
    assert fields[0] == ("id", "5-1")
    assert data_of(frame) == value


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
def test_named_event_round_trips(value: Any) -> None:
    """A named event keeps id, event and one data line, in that order, and the data parses back."""
    frame = sse.event("5-2", value, "error")
    fields = parse_frame(frame)
    assert [name for name, _ in fields] == ["id", "event", "data"]
    assert fields[:2] == [("id", "5-2"), ("event", "error")]
    assert data_of(frame) == value


def test_data_is_compact_json() -> None:
    """The data line is compact JSON: no spaces after separators."""
    frame = sse.event("1-0", {"a": [1, 2], "b": {"c": "d"}})
    assert frame == b'id: 1-0\ndata: {"a":[1,2],"b":{"c":"d"}}\n\n'


@pytest.mark.parametrize(
    ("event_id", "expected_id"),
    [
        ("12-3\n", "12-3"),
        ("12\r-3", "12-3"),
        ("\r\n12-3\r\n", "12-3"),
        ("12-3\n\ndata: {}\n\n", "12-3data: {}"),
    ],
)
def test_line_breaks_in_id_cannot_split_the_event(event_id: str, expected_id: str) -> None:
    """CR and LF in an id are stripped, so the frame stays one event with that id."""
    frame = sse.event(event_id, {"x": 1}, "err\r\n\r\nor")
    fields = parse_frame(frame)
    assert fields == [("id", expected_id), ("event", "error"), ("data", '{"x":1}')]


@pytest.mark.parametrize(
    ("milliseconds", "expected"),
    [(3000, b"retry: 3000\n\n"), (0, b"retry: 0\n\n"), (150, b"retry: 150\n\n")],
)
def test_retry(milliseconds: int, expected: bytes) -> None:
    """retry() is the retry field with the whole number of milliseconds and a blank line."""
    assert sse.retry(milliseconds) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ping", b": ping\n\n"),
        ("stream 42 open", b": stream 42 open\n\n"),
        ("two\nlines\r\n", b": twolines\n\n"),
        ("caf\u00e9", ": caf\u00e9\n\n".encode()),
        ("", b": \n\n"),
    ],
)
def test_comment(text: str, expected: bytes) -> None:
    """comment() is one ': ' line (line breaks stripped) and a blank line."""
    assert sse.comment(text) == expected


def test_ping_is_the_ping_comment() -> None:
    """PING is exactly the ': ping' comment frame."""
    assert sse.PING == b": ping\n\n"
    assert sse.PING == sse.comment("ping")
