"""The HTTP API blueprint: requests in, validation, responses out.

Views stay thin: authentication (``auth``), validation (``validation``), then the stream
registry and the relay (``streams``, ``streaming``). Nothing imports this module.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from .auth import authenticated, current_user
from .commands import public_catalog
from .config import Settings
from .quotas import Quotas, rate_limiter
from .streaming import relay, sse_response
from .streams import StreamRegistry
from .validation import parse_run_request

bp = Blueprint("api", __name__)


def _settings() -> Settings:
    return current_app.extensions["axrisi.settings"]  # type: ignore[no-any-return]


def _registry() -> StreamRegistry:
    return current_app.extensions["axrisi.streams"]  # type: ignore[no-any-return]


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
