"""The HTTP API blueprint: requests in, validation, responses out.

Views stay thin: authentication (``auth``), validation (``validation``), then the stream
registry and the relay (``streams``, ``streaming``). Nothing imports this module.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from .auth import authenticated, current_user
from .commands import public_catalog
from .config import Settings
from .errors import ApiError
from .quotas import Quotas, rate_limiter, user_key
from .resume import RedisEvents, not_found, parse_stream_id, resume_position
from .streaming import relay, relay_remote, sse_response
from .streams import StreamRegistry
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


def _rate_limit() -> str:
    return _settings().rate_limit


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return jsonify(status="ok")


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
    registry = _registry()
    quotas = _quotas()
    lease = quotas.admit(current_user())
    try:
        stream = registry.start(current_user(), run_request, lease)
    except BaseException:
        quotas.slots.release(lease)
        raise
    body = relay(registry, stream, 0, request.environ.get("gunicorn.socket"),
                 heartbeat=settings.heartbeat_seconds,
                 send_timeout=settings.send_timeout_seconds)
    return sse_response(body)


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
        return sse_response(relay(registry, stream, position, socket,
                                  heartbeat=settings.heartbeat_seconds,
                                  send_timeout=settings.send_timeout_seconds))
    mirror = _mirror()
    if mirror is None or mirror.owner(number) != owner:
        raise not_found()
    first_kept = mirror.first_kept_seq(number)
    if first_kept is None:
        raise not_found()
    _check_position(position, first_kept, None)
    return sse_response(relay_remote(mirror, number, position, socket,
                                     heartbeat=settings.heartbeat_seconds,
                                     send_timeout=settings.send_timeout_seconds,
                                     grace=settings.resume_grace_seconds))


def _check_position(position: int, first_kept: int, next_seq: int | None) -> None:
    """400 for an id past the stream's events; 404 for one whose successors were dropped."""
    if next_seq is not None and position > next_seq:
        raise ApiError(400, "invalid_request",
                       "Last-Event-ID is not the id of an event of this stream.")
    if position < first_kept:
        raise ApiError(404, "not_found",
                       "The events after that id are no longer kept; start a new stream.")
