"""The HTTP API blueprint: requests in, validation, responses out.

Views stay thin: authentication (``auth``), limits (``quotas``, ``lifecycle``), validation
(``validation``), then the stream registry and the relays (``streams``, ``streaming``). Nothing
imports this module.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import requestlog
from .auth import authenticated, current_user, user_key
from .commands import public_catalog
from .config import Settings
from .errors import ApiError
from .lifecycle import Lifecycle
from .quotas import Quotas, rate_limiter
from .resume import (
    CannotTell,
    RedisEvents,
    bad_last_event_id,
    not_found,
    parse_stream_id,
    resume_position,
    unavailable,
)
from .streaming import relay, relay_remote, sse_response
from .streams import Stream, StreamRegistry
from .validation import parse_run_request

bp = Blueprint("api", __name__)


def _settings() -> Settings:
    return current_app.extensions["axrisi.settings"]  # type: ignore[no-any-return]


def _registry() -> StreamRegistry:
    return current_app.extensions["axrisi.streams"]  # type: ignore[no-any-return]


def _events() -> RedisEvents | None:
    return current_app.extensions["axrisi.events"]  # type: ignore[no-any-return]


def _quotas() -> Quotas:
    return current_app.extensions["axrisi.quotas"]  # type: ignore[no-any-return]


def _lifecycle() -> Lifecycle:
    return current_app.extensions["axrisi.lifecycle"]  # type: ignore[no-any-return]


def _rate_limit() -> str:
    return _settings().rate_limit


@bp.get("/api/commands")
@authenticated
def commands() -> Response:
    """The command catalog."""
    return jsonify(public_catalog())


@bp.post("/api/run")
@authenticated
@rate_limiter.limit(_rate_limit)
def run() -> Response:
    """Authenticate, count the request, validate, admit, then relay the stream as SSE."""
    settings = _settings()
    run_request = parse_run_request(request, settings.max_text_chars, settings.max_body_bytes)
    _lifecycle().admit()
    registry = _registry()
    quotas = _quotas()
    lease = quotas.admit(current_user())
    try:
        stream = registry.start(current_user(), run_request, lease)
    except BaseException:
        quotas.slots.release(lease)
        raise
    return _stream_response(relay(registry, stream, 0, request.environ.get("gunicorn.socket"),
                                  heartbeat=settings.heartbeat_seconds,
                                  send_timeout=settings.send_timeout_seconds,
                                  on_close=_log_at_close(stream)))


@bp.get("/api/streams/<stream_id>")
@authenticated
def resume(stream_id: str) -> Response:
    """Replay the events after Last-Event-ID, then follow the stream live to its end.

    ``204`` when the id is the stream's terminal event (nothing more: a plain EventSource stops
    reconnecting on it); ``503`` when Redis cannot tell whether the stream exists (never 404).
    """
    number = parse_stream_id(stream_id)
    last_event_id = request.headers.get("Last-Event-ID", request.args.get("lastEventId"))
    position = resume_position(number, last_event_id)
    owner = user_key(current_user())
    stream = _registry().lookup(number)
    if stream is not None:
        if stream.owner_key != owner:
            raise not_found()
        return _resume_local(stream, position)
    events = _events()
    if events is None:
        raise not_found()
    return _resume_remote(events, number, owner, position)


def _resume_local(stream: Stream, position: int) -> Response:
    """A stream of this worker, followed through its in-memory event log."""
    event_log = stream.log
    _check_position(position, event_log.base, event_log.next_seq)
    if event_log.finished_at(position):
        return Response(status=204)
    settings = _settings()
    return _stream_response(relay(_registry(), stream, position,
                                  request.environ.get("gunicorn.socket"),
                                  heartbeat=settings.heartbeat_seconds,
                                  send_timeout=settings.send_timeout_seconds,
                                  on_close=_log_at_close(stream)))


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
    _check_position(position, remote.first, remote.top + 1)
    if remote.ended and position == remote.top + 1:
        return Response(status=204)
    settings = _settings()
    return _stream_response(relay_remote(events, number, position,
                                         request.environ.get("gunicorn.socket"),
                                         heartbeat=settings.heartbeat_seconds,
                                         send_timeout=settings.send_timeout_seconds,
                                         grace=settings.resume_grace_seconds,
                                         on_close=_log_at_close(None)))


def _stream_response(body: object) -> Response:
    g.axrisi_streaming = True  # the access line is written when the connection ends
    return sse_response(body)  # type: ignore[arg-type]


def _log_at_close(stream: Stream | None) -> Callable[[], None]:
    """The access-log line for a stream connection, bound now, written when it closes."""
    request_id, method, path = g.request_id, request.method, request.path
    user_hash, started = g.axrisi_user_hash, g.request_started

    def write() -> None:
        generation = stream.generation if stream is not None else None
        requestlog.stream_line(
            request_id, method, path, user_hash,
            command=stream.command if stream is not None else None,
            started=started,
            outcome=(generation.outcome or "client_gone") if generation else "relayed",
            first_token_at=generation.first_content_at if generation else None,
            tokens=generation.content_pieces if generation else 0,
        )

    return write


def _check_position(position: int, first_kept: int, next_seq: int | None) -> None:
    """400 for an id past the stream's events; 404 for one whose successors were dropped."""
    if next_seq is not None and position > next_seq:
        raise bad_last_event_id()
    if position < first_kept:
        raise ApiError(404, "not_found",
                       "The events after that id are no longer kept; start a new stream.")


