"""A user's streams across every worker and instance: the index ``GET /api/streams`` reads.

Each user has one sorted set in their own hash slot (``keys.listed``), a member per stream
(:class:`~axrisi.stream.listing.Listed`, scored by its start), written by the generating
worker's mirror with the stream's first events (``EventMirror``) and trimmed to the newest
``keys.LISTED_KEEP``. A stream's state and newest event are not copied there: they are read
from the stream's own events when the list is asked for (one pipeline), so the list says what a
resume would find. Members whose stream expired are dropped as the list meets them.

The index costs Redis three commands per stream, in a pipeline the mirror sends anyway: none
per token.
"""

from __future__ import annotations

from typing import Any, cast

import redis

from .. import jsonutil
from ..stream.listing import Listed, state_of
from . import keys
from .events import CannotTell, seq_of, split_entry
from .store import SharedStore


class SharedListing:
    """Reads a user's index and the state of each stream in it."""

    def __init__(self, store: SharedStore) -> None:
        self.store = store

    def entries(self, owner: str) -> list[dict[str, Any]]:
        """``owner``'s streams as Redis holds them, newest first; :class:`CannotTell` while
        Redis does not answer."""
        return self.store.run(lambda client: self._read(client, owner), _cannot_tell,
                              "stream_list")

    def _read(self, client: redis.Redis, owner: str) -> list[dict[str, Any]]:
        index = keys.listed(owner)
        members = cast("list[bytes]", client.zrevrange(index, 0, keys.LISTED_KEEP - 1))
        listed = [Listed.decode(member) for member in members]
        if not listed:
            return []
        pipe = client.pipeline(transaction=False)
        for item in listed:
            pipe.exists(keys.record(item.stream_id))
            pipe.xrevrange(keys.events(item.stream_id), count=1)
        replies = pipe.execute()
        entries, expired = [], []
        for item, kept, newest in zip(listed, replies[::2], replies[1::2], strict=True):
            if not kept:
                expired.append(item.encode())
                continue
            entries.append(_entry(item, newest))
        if expired:
            client.zrem(index, *expired)
        return entries


def _entry(item: Listed, newest: list[tuple[bytes, dict[bytes, bytes]]]) -> dict[str, Any]:
    """The entry with its state and newest event from the stream's newest Redis entry (none
    yet: its title only, written by its worker within the mirror's batch time)."""
    if not newest:
        return item.public("running", 0)
    entry_id, fields = newest[0]
    outcome = None
    if b"t" in fields:
        _first, frames = split_entry(entry_id, fields)
        outcome = terminal_outcome(frames[-1])
    return item.public(state_of(outcome), seq_of(entry_id))


def terminal_outcome(frame: bytes) -> str:
    """``done``, or the error code, of a stream's terminal event."""
    data = jsonutil.loads(frame[frame.index(b"data: ") + 6:].strip())
    return "done" if data.get("done") else str(data.get("code") or "internal")


def _cannot_tell() -> list[dict[str, Any]]:
    raise CannotTell()
