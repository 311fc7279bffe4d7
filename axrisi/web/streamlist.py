"""``GET /api/streams``: the caller's readable streams, from this worker and the shared state.

This worker's own streams are read from its registry (exact, even before the mirror has written
them); with shared state, everyone else's from Redis (:mod:`axrisi.shared.listing`). Where both
know a stream, this worker's view wins: it is never behind. A Redis that cannot answer makes the
list unknowable, which is a ``503`` (a partial list would hide a running answer).
"""

from __future__ import annotations

from typing import Any

from ..shared import SharedState
from ..shared.events import CannotTell
from ..stream.listing import newest, state_of
from ..stream.registry import Stream, StreamRegistry
from .resume import unavailable


def streams_of(registry: StreamRegistry, shared: SharedState | None,
               owner: str) -> list[dict[str, Any]]:
    """``owner``'s streams that can still be read, newest first, at most 50."""
    here = [_entry(stream) for stream in registry.streams_of(owner)]
    if shared is None:
        return newest(here)
    try:
        elsewhere = shared.listing.entries(owner)
    except CannotTell:
        raise unavailable() from None
    return newest(here + elsewhere)


def _entry(stream: Stream) -> dict[str, Any]:
    """A stream of this worker, as listed now."""
    return stream.listed.public(state_of(stream.generation.outcome), stream.log.next_seq - 1)
