"""The HTTP API blueprint: requests in, validation, responses out.

Views stay thin: authentication (``auth``), limits (``quotas``, ``lifecycle``), validation
(``validation``), then the engine's registry and relays (``axrisi.stream``) and, for a stream
of another worker, the shared state's reader (``axrisi.shared.events``). Nothing imports this
module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flask import Blueprint, Response, jsonify, request

from ..commands import public_catalog
from ..shared.events import CannotTell, PastTheEnd, RedisEvents
from ..shared.store import OUTAGE_ERRORS
from ..stream.direct import framing_of
from ..stream.registry import Stream
from ..stream.relay import relay, relay_remote
from ..users import user_key
from . import requestlog
from .auth import authenticated, current_user
from .errors import ApiError
from .quotas import rate_limiter
from .resume import (
    bad_last_event_id,
    last_event_id,
    not_found,
    parse_stream_id,
    resume_position,
    unavailable,
)
from .services import services
from .validation import parse_run_request

bp = Blueprint("api", __name__)

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def _rate_limit() -> str:
    return services().settings.rate_limit


@bp.get("/api/commands")
@authenticated
def commands() -> Response:
    """The command catalog."""
    return jsonify(public_catalog())


@bp.get("/api/usage")
@authenticated
def usage() -> Response:
    """The caller's limits and what is left of them (counts against no quota)."""
    return jsonify(services().quotas.usage(current_user()))


@bp.post("/api/run")
@authenticated
@rate_limiter.limit(_rate_limit)
def run() -> Response:
    """Authenticate, count the request, validate, admit, then relay the stream as SSE."""
    found = services()
    settings = found.settings
    run_request = parse_run_request(request, settings.max_text_chars, settings.max_body_bytes)
    found.lifecycle.admit()
    registry = found.registry
    quotas = found.quotas
    lease = quotas.admit(current_user())
    try:
        stream = registry.start(current_user(), run_request, lease)
    except BaseException:
        quotas.slots.release(lease)
        raise
    return _stream_response(relay(registry, stream, 0, request.environ.get("gunicorn.socket"),
                                  heartbeat=settings.heartbeat_seconds,
                                  send_timeout=settings.send_timeout_seconds,
                                  on_close=_log_at_close(stream),
                                  framing=framing_of(request.environ, found.direct_writes)))


@bp.get("/api/streams/<stream_id>")
@authenticated
def resume(stream_id: str) -> Response:
    """Replay the events after Last-Event-ID, then follow the stream live to its end.

    ``204`` when the id is the stream's terminal event (nothing more: a plain EventSource stops
    reconnecting on it); ``503`` when Redis cannot tell whether the stream exists (never 404).
    """
    number = parse_stream_id(stream_id)
    position = resume_position(number, last_event_id(request.headers.get("Last-Event-ID"),
                                                     request.args.getlist("lastEventId")))
    owner = user_key(current_user())
    stream = services().registry.lookup(number)
    if stream is not None:
        if stream.owner_key != owner:
            raise not_found()
        return _resume_local(stream, position)
    shared = services().shared
    if shared is None:
        raise not_found()
    return _resume_remote(shared.events, number, owner, position)


@bp.delete("/api/streams/<stream_id>")
@authenticated
def stop(stream_id: str) -> Response:
    """Stop a stream now, on whichever worker or instance runs it: ``204``, and the stream ends
    for every reader with ``cancelled`` (a stream that had ended keeps its terminal event)."""
    number = parse_stream_id(stream_id)
    owner = user_key(current_user())
    found = services()
    stream = found.registry.lookup(number)
    if stream is not None:
        if stream.owner_key != owner:
            raise not_found()
        found.registry.stop(number)
        return Response(status=204)
    if found.shared is None:
        raise not_found()
    try:
        remote = found.shared.events.probe(number, owner)
        if remote is None:
            raise not_found()
        if not remote.ended:
            found.shared.stops.request(remote.worker, number)
    except (CannotTell, *OUTAGE_ERRORS):
        raise unavailable() from None
    return Response(status=204)


def _resume_local(stream: Stream, position: int) -> Response:
    """A stream of this worker, followed through its in-memory event log."""
    event_log = stream.log
    _check_position(position, event_log.base, event_log.next_seq)
    if event_log.finished_at(position):
        return Response(status=204)
    found = services()
    settings = found.settings
    return _stream_response(relay(found.registry, stream, position,
                                  request.environ.get("gunicorn.socket"),
                                  heartbeat=settings.heartbeat_seconds,
                                  send_timeout=settings.send_timeout_seconds,
                                  on_close=_log_at_close(stream),
                                  framing=framing_of(request.environ, found.direct_writes)))


def _resume_remote(events: RedisEvents, number: int, owner: str, position: int) -> Response:
    """A stream of another worker or instance, followed through Redis."""
    try:
        remote = events.probe(number, owner)
        if remote is None:
            raise not_found()
        if position > remote.top + 1:
            remote = events.past_end(number, owner, position, remote)
    except CannotTell:
        raise unavailable() from None
    except PastTheEnd:
        raise bad_last_event_id() from None
    _check_position(position, remote.first, remote.top + 1)
    if remote.ended and position == remote.top + 1:
        return Response(status=204)
    settings = services().settings
    return _stream_response(relay_remote(events, number, position, remote.worker,
                                         request.environ.get("gunicorn.socket"),
                                         heartbeat=settings.heartbeat_seconds,
                                         send_timeout=settings.send_timeout_seconds,
                                         grace=settings.resume_grace_seconds,
                                         on_close=_log_at_close(None)))


def _stream_response(body: Iterator[bytes]) -> Response:
    """A streaming response with the contract's headers and no Content-Length."""
    requestlog.current().streaming = True  # the access line is written when it ends
    response = Response(body, status=200, content_type="text/event-stream; charset=utf-8",
                        direct_passthrough=True)
    response.headers.update(SSE_HEADERS)
    return response


def _log_at_close(stream: Stream | None) -> Callable[[], None]:
    """The access-log line for a stream connection, bound now, written when it closes."""
    info = requestlog.current()
    request_id, method, path = info.request_id, request.method, request.path
    user_hash, started = info.user_hash or "", info.started

    def write() -> None:
        if stream is None:  # a stream of another worker, relayed from Redis
            requestlog.stream_line(request_id, method, path, user_hash, command=None,
                                   started=started, outcome="relayed", first_token_at=None,
                                   tokens=0)
            return
        end, generation = stream.end, stream.generation  # no end yet: the client left first
        requestlog.stream_line(
            request_id, method, path, user_hash, command=stream.command, started=started,
            outcome=end.outcome if end else "client_gone",
            first_token_at=end.first_content_at if end else generation.first_content_at,
            tokens=end.tokens_out if end else generation.content_pieces,
            fallback=generation.fallback_reason,
        )

    return write


def _check_position(position: int, first_kept: int, next_seq: int | None) -> None:
    """400 for an id past the stream's events; 404 for one whose successors were dropped."""
    if next_seq is not None and position > next_seq:
        raise bad_last_event_id()
    if position < first_kept:
        raise ApiError(404, "not_found",
                       "The events after that id are no longer kept; start a new stream.")


