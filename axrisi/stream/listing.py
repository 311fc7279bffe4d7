"""A user's streams as ``GET /api/streams`` lists them: running, or ended and still readable.

A stream's entry has two parts. What is fixed at its start (:class:`Listed`: the command, the
title, when, whether in the background) is written once, where the list is kept (the registry
for this worker's streams, the owner's index in Redis for everyone's). What changes (its state
and its newest event) is read where its events are, when the list is asked for, so that the
list is never staler than a resume would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import jsonutil

MAX_LISTED = 50
"""The contract's most streams in one answer, newest first."""


@dataclass(frozen=True, slots=True)
class Listed:
    """What a stream's list entry says from its start on."""

    stream_id: int
    command: str
    title: str
    started_ms: int
    background: bool

    def encode(self) -> bytes:
        """As the Redis index keeps it (one member per stream)."""
        return jsonutil.dumps({"streamId": self.stream_id, "command": self.command,
                               "title": self.title, "startedAt": self.started_ms,
                               "background": self.background})

    @classmethod
    def decode(cls, raw: bytes) -> Listed:
        fields = jsonutil.loads(raw)
        return cls(int(fields["streamId"]), str(fields["command"]), str(fields["title"]),
                   int(fields["startedAt"]), bool(fields["background"]))

    def public(self, state: str, last_seq: int) -> dict[str, Any]:
        """The entry as the API answers it, with the stream's state and newest event now."""
        return {"streamId": str(self.stream_id), "command": self.command, "title": self.title,
                "state": state, "startedAt": self.started_ms,
                "lastEventId": f"{self.stream_id}-{max(last_seq, 0)}",
                "background": self.background}


def state_of(outcome: str | None) -> str:
    """``running``, ``done``, ``cancelled`` or ``error``, from a generation's outcome."""
    if outcome is None:
        return "running"
    return outcome if outcome in ("done", "cancelled") else "error"


def newest(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per stream (the first given wins), newest first, at most :data:`MAX_LISTED`."""
    unique: dict[str, dict[str, Any]] = {}
    for entry in entries:
        unique.setdefault(entry["streamId"], entry)
    ordered = sorted(unique.values(), key=lambda e: (e["startedAt"], int(e["streamId"])),
                     reverse=True)
    return ordered[:MAX_LISTED]
