"""A resume request's inputs and refusals: the stream id in the URL, ``Last-Event-ID``, and the
contract's 404 / 400 / 503 for what the shared state answers."""

from __future__ import annotations

import re

from .errors import ApiError

_STREAM_ID = re.compile(r"^[1-9][0-9]{0,18}$")
_SEQ = re.compile(r"^[0-9]{1,12}$")
"""ASCII digits only: ``str.isdigit()`` accepts superscripts that ``int()`` refuses."""


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


