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
from .resume import RedisEvents, not_found, parse_stream_id, resume_position
from .streaming import relay, relay_remote, sse_response
from .streams import Stream, StreamRegistry
from .validation import parse_run_request

bp = Blueprint("api", __name__)


def _settings() -> Settings:
    return current_app.extensions["axrisi.settings"]  # type: ignore[no-any-return]


def _registry() -> StreamRegistry:
    return current_app.extensions["axrisi.streams"]  # type: ignore[no-any-return]


def _mirror() -> RedisEvents | None:
    return current_app.extensions["axrisi.mirror"]  # type: ignore[no-any-return]


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
    """Replay the events after Last-Event-ID, then follow the stream live to its end."""
    settings = _settings()
    number = parse_stream_id(stream_id)
    last_event_id = request.headers.get("Last-Event-ID", request.args.get("lastEventId"))
    position = resume_position(number, last_event_id)
    owner = user_key(current_user())
    socket = request.environ.get("gunicorn.socket")
    registry = _registry()
    stream = registry.lookup(number)
    if stream is not None:
        if stream.owner_key != owner:
            raise not_found()
        _check_position(position, stream.log.base, stream.log.next_seq)
        return _stream_response(relay(registry, stream, position, socket,
                                      heartbeat=settings.heartbeat_seconds,
                                      send_timeout=settings.send_timeout_seconds,
                                      on_close=_log_at_close(stream)))
    mirror = _mirror()
    if mirror is None or mirror.owner(number) != owner:
        raise not_found()
    # None: the owner is known but no event has reached Redis yet (writes are batched).
    first_kept = mirror.first_kept_seq(number) or 0
    _check_position(position, first_kept, None)
    return _stream_response(relay_remote(mirror, number, position, socket,
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
        raise ApiError(400, "invalid_request",
                       "Last-Event-ID is not the id of an event of this stream.")
    if position < first_kept:
        raise ApiError(404, "not_found",
                       "The events after that id are no longer kept; start a new stream.")


