"""The one JSON error shape, and how every failure before the first byte of a stream becomes it.

::

    werkzeug.HTTPException
     └── ApiError                 status + code + a sentence a person can act on (+ headers)
          ├── Unauthorized        401 unauthorized, always the same body
          ├── (400) invalid_json, invalid_request, unknown_command
          ├── (413) too_large     (also werkzeug's RequestEntityTooLarge, mapped here)
          ├── (415) unsupported_media_type
          ├── (429) rate_limited, too_many_streams, quota_exceeded
          └── (503) unavailable

Errors after the stream's first byte cannot change the status any more: they are ``event: error``
frames (see ``sse.py``). Any other exception is logged with its stack trace and answered with a
bare ``500 internal``: the client never sees a trace, a key or an upstream address.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask, Response, has_request_context
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from .. import jsonutil
from ..metrics import REJECTIONS, STREAMS
from . import requestlog

log = logging.getLogger(__name__)

_GENERIC_CODES = {
    400: ("bad_request", "The request could not be understood."),
    404: ("not_found", "There is nothing at this address."),
    405: ("method_not_allowed", "This address does not take that method."),
    413: ("too_large", "The request body is too large."),
    500: ("internal", "Something went wrong on our side; please try again."),
}


class ApiError(HTTPException):
    """An error answered as ``{"error": sentence, "code": code}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None, quiet: bool = False) -> None:
        super().__init__(message)
        self.code = status
        self.error_code = code
        self.message = message
        self.extra_headers = dict(headers or {})
        self.quiet = quiet
        """No access-log line of its own: it is counted in an aggregate line instead."""

    def get_response(self, environ: object = None, scope: object = None) -> Response:
        """Render the one JSON shape, whoever raised it."""
        return json_error(self.code or 500, self.error_code, self.message, self.extra_headers,
                          quiet=self.quiet)


class Unauthorized(ApiError):
    """Every authentication failure, deliberately indistinguishable from the others."""

    def __init__(self) -> None:
        super().__init__(401, "unauthorized", "Unauthorized", {"WWW-Authenticate": "Bearer"})


def json_error(status: int, code: str, message: str,
               headers: Mapping[str, str] | None = None, quiet: bool = False) -> Response:
    """Build an error response in the contract's shape (and note its code for logs/metrics)."""
    _note(status, code, quiet)
    response = Response(jsonutil.dumps({"error": message, "code": code}), status=status,
                        mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _note(status: int, code: str, quiet: bool = False) -> None:
    if not has_request_context():
        return
    info = requestlog.current_or_none()
    if info is not None:
        info.error_code = code
        info.quiet = quiet
    if status in (429, 503):
        REJECTIONS.labels(code).inc()
        if status == 429:
            STREAMS.labels("limited").inc()


def init_app(app: Flask) -> None:
    """Register the handlers that turn every error into the one JSON shape."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error.get_response()

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code, message = _GENERIC_CODES.get(status, ("http_error", error.name))
        allowed = error.valid_methods if isinstance(error, MethodNotAllowed) else None
        headers = {"Allow": ", ".join(allowed)} if allowed else None
        return json_error(status, code, message, headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        code, message = _GENERIC_CODES[500]
        return json_error(500, code, message)
