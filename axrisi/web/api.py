"""The HTTP API blueprint: requests in, validation, responses out.

Views stay thin: authentication (``auth``), limits (``quotas``, ``lifecycle``), validation
(``validation``), then the engine's registry and relays (``axrisi.stream``); where a resumed or
stopped stream is, and the answers when it is nowhere to be had, ``resume``. Nothing imports
this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flask import Blueprint, Response, jsonify, request

from ..commands import public_catalog
from ..stream.direct import framing_of
from ..stream.registry import Stream
from ..stream.relay import relay, relay_remote
from ..users import user_key
from . import requestlog
from .auth import authenticated, current_user
from .quotas import rate_limiter
from .resume import (
    Here,
    catch_up,
    for_resume,
    last_event_id,
    parse_stream_id,
    resume_position,
    wants_snapshot,
)
from .resume import stop as stop_stream
from .services import services
from .streamlist import streams_of
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
    with registry.starting():  # from the id's claim until the stream is tracked
        lease, stream_id = quotas.admit(current_user())
        try:
            stream = registry.start(current_user(), run_request, lease, stream_id)
        except BaseException:
            quotas.slots.release(lease)
            raise
    return _stream_response(relay(registry, stream, 0, request.environ.get("gunicorn.socket"),
                                  heartbeat=settings.heartbeat_seconds,
                                  send_timeout=settings.send_timeout_seconds,
                                  on_close=_log_at_close(stream),
                                  framing=framing_of(request.environ, found.direct_writes)))


@bp.get("/api/streams")
@authenticated
def streams() -> Response:
    """The caller's streams that can still be read, on any worker or instance (counts against
    no quota)."""
    found = services()
    return jsonify({"streams": streams_of(found.registry, found.shared,
                                          user_key(current_user()))})


@bp.get("/api/streams/<stream_id>")
@authenticated
def resume(stream_id: str) -> Response:
    """Replay the events after Last-Event-ID (or fold them into one snapshot event), then follow
    the stream live to its end: from this worker's log or through the shared state, as
    :func:`.resume.for_resume` decides (with the ``204`` / ``400`` / ``404`` / ``503``
    answers)."""
    number = parse_stream_id(stream_id)
    position = resume_position(number, last_event_id(request.headers.get("Last-Event-ID"),
                                                     request.args.getlist("lastEventId")))
    snapshot = wants_snapshot(request.args.getlist("catchup"))
    found = services()
    where = for_resume(found.registry, found.shared, number, user_key(current_user()), position)
    if where is None:
        return Response(status=204)
    prelude = b""
    if snapshot:
        prelude, position = catch_up(found.shared, number, position, where)
    settings = found.settings
    client_socket = request.environ.get("gunicorn.socket")
    if isinstance(where, Here):
        return _stream_response(relay(found.registry, where.stream, position, client_socket,
                                      heartbeat=settings.heartbeat_seconds,
                                      send_timeout=settings.send_timeout_seconds,
                                      on_close=_log_at_close(where.stream),
                                      framing=framing_of(request.environ, found.direct_writes),
                                      prelude=prelude))
    assert found.shared is not None  # Elsewhere is found only through the shared state
    return _stream_response(relay_remote(found.shared.events, number, position,
                                         where.remote.worker, client_socket,
                                         heartbeat=settings.heartbeat_seconds,
                                         send_timeout=settings.send_timeout_seconds,
                                         grace=settings.resume_grace_seconds,
                                         on_close=_log_at_close(None), prelude=prelude))


@bp.delete("/api/streams/<stream_id>")
@authenticated
def stop(stream_id: str) -> Response:
    """Stop a stream now, on whichever worker or instance runs it: ``204``, and the stream ends
    for every reader with ``cancelled`` (a stream that had ended keeps its terminal event)."""
    found = services()
    stop_stream(found.registry, found.shared, parse_stream_id(stream_id),
                user_key(current_user()))
    return Response(status=204)


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
