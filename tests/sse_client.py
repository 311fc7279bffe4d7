"""A small, strict SSE reader for the tests, written from the HTML standard's parsing rules.

Independent of the service's own framing code, so that a framing bug cannot hide itself: the
tests read the service's bytes the way a browser would.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    """One dispatched event, plus the comments and retry seen since the previous one."""

    id: str | None
    event: str
    data: str
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Parser:
    """Feeds bytes in any split; yields events as they complete."""

    buffer: bytes = b""
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    all_comments: list[str] = field(default_factory=list)
    _id: str | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, chunk: bytes) -> Iterator[Event]:
        self.buffer += chunk
        while True:
            line, sep, rest = _split_line(self.buffer)
            if not sep:
                return
            self.buffer = rest
            event = self._line(line.decode("utf-8"))
            if event is not None:
                yield event

    def _line(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = Event(self._id, self._event or "message", "\n".join(self._data),
                          self.comments)
            self._event, self._data, self.comments = "", [], []
            return event
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            self.all_comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None


def _split_line(buffer: bytes) -> tuple[bytes, bytes, bytes]:
    for i, byte in enumerate(buffer):
        if byte == 0x0A:
            return buffer[:i], b"\n", buffer[i + 1:]
        if byte == 0x0D:
            if i + 1 == len(buffer):
                return b"", b"", buffer
            skip = 2 if buffer[i + 1] == 0x0A else 1
            return buffer[:i], buffer[i:i + skip], buffer[i + skip:]
    return b"", b"", buffer


def parse_all(chunks: Iterable[bytes]) -> tuple[list[Event], Parser]:
    """Parse a whole byte stream."""
    parser = Parser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events, parser
