"""Where a stream is read or stopped from, and the contract's answers: the one place that decides
a resume's ``200`` / ``204`` / ``400`` / ``404`` / ``503`` and a stop's ``204`` / ``404`` /
``503``.

A stream of this worker is found in the engine's registry; any other, through the shared state
(:class:`~axrisi.shared.events.RedisEvents`, on one Redis or a cluster alike). The views in
``api.py`` only relay what this module found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..shared import SharedState
from ..shared.events import CannotTell, PastTheEnd, RemoteStream
from ..shared.store import OUTAGE_ERRORS
from ..stream.registry import Stream, StreamRegistry
from ..stream.snapshot import fold
from .errors import ApiError

_STREAM_ID = re.compile(r"^[1-9][0-9]{0,18}$")
_SEQ = re.compile(r"^[0-9]{1,12}$")
"""ASCII digits only: ``str.isdigit()`` accepts superscripts that ``int()`` refuses."""


@dataclass(frozen=True)
class Here:
    """The stream runs (or ran) on this worker: read from its event log."""

    stream: Stream


@dataclass(frozen=True)
class Elsewhere:
    """Another worker or instance generates it: read through the shared state."""

    number: int
    remote: RemoteStream


Found = Here | Elsewhere | None
"""None: the position is the stream's end (a resume answers ``204``)."""


def not_found() -> ApiError:
    return ApiError(404, "not_found", "There is no such stream, or it has expired.")


def bad_last_event_id() -> ApiError:
    return ApiError(400, "invalid_request",
                    "Last-Event-ID is not the id of an event of this stream.")


def unavailable() -> ApiError:
    return ApiError(503, "unavailable",
                    "The stream cannot be looked up right now; try again shortly.",
                    {"Retry-After": "1"})


def parse_stream_id(value: str) -> int:
    """A stream id from the URL; anything else is simply not a stream we know (404)."""
    if not _STREAM_ID.match(value):
        raise not_found()
    return int(value)


def last_event_id(header: str | None, query: list[str]) -> str | None:
    """The id to resume after: the header (as EventSource sends it) unless blank, else the one
    ``lastEventId`` query parameter; the parameter given twice is a 400, not a guess."""
    if header is not None and header.strip():
        return header
    if len(query) > 1:
        raise ApiError(400, "invalid_request", "Give lastEventId at most once.")
    return query[0] if query else header


def resume_position(stream_id: int, last_event_id: str | None) -> int:
    """The position after ``last_event_id`` (0 without one); 400 if it names another stream."""
    if last_event_id is None or last_event_id.strip() == "":
        return 0
    prefix, _, seq = last_event_id.strip().rpartition("-")
    if prefix != str(stream_id) or not _SEQ.match(seq):
        raise bad_last_event_id()
    return int(seq) + 1


def for_resume(registry: StreamRegistry, shared: SharedState | None, number: int, owner: str,
               position: int) -> Found:
    """Where to read ``owner``'s stream from ``position``: this worker's log, the shared state,
    or nowhere more (its end: ``204``); else the :class:`ApiError` the contract asks for."""
    stream = _here(registry, number, owner)
    if stream is not None:
        event_log = stream.log
        _check_position(position, event_log.base, event_log.next_seq)
        return None if event_log.finished_at(position) else Here(stream)
    events = _shared(shared).events
    try:
        remote = _elsewhere(events.probe(number, owner))
        if position > remote.top + 1:
            remote = events.past_end(number, owner, position, remote)
    except CannotTell:
        raise unavailable() from None
    except PastTheEnd:
        raise bad_last_event_id() from None
    _check_position(position, remote.first, remote.top + 1)
    return None if remote.ended and position == remote.top + 1 else Elsewhere(number, remote)


def wants_snapshot(catchup: list[str]) -> bool:
    """``?catchup=snapshot``: fold the kept events into one; anything else there is a 400."""
    if not catchup:
        return False
    if catchup != ["snapshot"]:
        raise ApiError(400, "invalid_request",
                       "The parameter 'catchup' must be 'snapshot', given once.")
    return True


def catch_up(shared: SharedState | None, number: int, position: int,
             where: Here | Elsewhere) -> tuple[bytes, int]:
    """The snapshot event of the kept events from ``position`` on (``b""``: none) and the
    position the reply goes on from."""
    if isinstance(where, Here):
        frames = where.stream.log.read(position)
    else:
        try:
            frames = _shared(shared).events.kept(number, position)
        except CannotTell:
            raise unavailable() from None
    event, covered = fold(number, frames)
    return event, position + covered


def stop(registry: StreamRegistry, shared: SharedState | None, number: int, owner: str) -> None:
    """Stop ``owner``'s stream wherever it runs (one that ended keeps its end); else the
    :class:`ApiError` the contract asks for (``404`` unknown, ``503`` cannot tell now)."""
    if _here(registry, number, owner) is not None:
        registry.stop(number)
        return
    state = _shared(shared)
    try:
        remote = _elsewhere(state.events.probe(number, owner))
        if not remote.ended:
            state.stops.request(remote.worker, number)
    except (CannotTell, *OUTAGE_ERRORS):
        raise unavailable() from None


def _here(registry: StreamRegistry, number: int, owner: str) -> Stream | None:
    """The stream on this worker (None: not here); another user's is not found."""
    stream = registry.lookup(number)
    if stream is not None and stream.owner_key != owner:
        raise not_found()
    return stream


def _shared(shared: SharedState | None) -> SharedState:
    """Without shared state, a stream not on this worker does not exist."""
    if shared is None:
        raise not_found()
    return shared


def _elsewhere(remote: RemoteStream | None) -> RemoteStream:
    if remote is None:
        raise not_found()
    return remote


def _check_position(position: int, first_kept: int, next_seq: int | None) -> None:
    """400 for an id past the stream's events; 404 for one whose successors were dropped."""
    if next_seq is not None and position > next_seq:
        raise bad_last_event_id()
    if position < first_kept:
        raise ApiError(404, "not_found",
                       "The events after that id are no longer kept; start a new stream.")
