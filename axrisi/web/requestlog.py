"""One JSON log line per request, at its end, and the ``X-Request-ID`` that ties them together.

The line holds the request id, a hash of the user, the command, the status, the outcome, the
time to first token, the duration and the tokens: enough to follow a complaint, and never the
text, the output, a token or a key. For a stream, "its end" is when the connection ends, so the
relay writes the line from its ``finally`` (:func:`stream_line`); other requests are logged in
``after_request``. A client's own ``X-Request-ID`` is echoed when it is sane (short, plain
characters), so that it can be followed through proxies; otherwise a new one is made.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, TextIO, cast

from flask import Flask, Response, g, request

from .. import jsonutil

access_log = logging.getLogger("axrisi.access")

_SANE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


class JsonLineHandler(logging.StreamHandler[TextIO]):
    """Writes a record's ``fields`` as one compact JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {"message": record.getMessage()}
        return jsonutil.dumps({"time": round(record.created, 3), **fields}).decode()


@dataclass
class RequestInfo:
    """What a request tells its access-log line, filled in as it goes: one typed record on
    ``flask.g`` (auth sets the user, errors the code, a stream view ``streaming``)."""

    request_id: str
    started: float
    user: str | None = None
    """The JWT's ``sub``: for the views and the limits, never written to the log."""
    user_hash: str | None = None
    error_code: str | None = None
    streaming: bool = False
    """The line is written when the stream's connection ends, not after the view."""
    quiet: bool = False
    """No line of its own (a refusal counted in an aggregate line: ``loginguard``)."""


def request_id(given: str | None) -> str:
    """The request's id: the client's own ``X-Request-ID`` when it is sane, else a new one (also
    used before Flask, by ``blockgate.py``)."""
    return given if given and _SANE_ID.match(given) else uuid.uuid4().hex


def current() -> RequestInfo:
    """This request's record (set before any view runs)."""
    return cast(RequestInfo, g.axrisi)


def current_or_none() -> RequestInfo | None:
    """This request's record, or None outside a request that reached the app's hooks."""
    return cast("RequestInfo | None", g.get("axrisi"))


def init_app(app: Flask) -> None:
    """Install the request-id hooks and the JSON line handler (once per process)."""
    if not access_log.handlers:
        access_log.addHandler(JsonLineHandler(sys.stderr))
        access_log.setLevel(logging.INFO)
        access_log.propagate = False

    @app.before_request
    def _start() -> None:
        g.axrisi = RequestInfo(request_id(request.headers.get("X-Request-ID")),
                               time.monotonic())

    @app.after_request
    def _finish(response: Response) -> Response:
        info = current_or_none()
        if info is None:
            return response
        response.headers["X-Request-ID"] = info.request_id
        if not info.streaming and not info.quiet:
            emit({
                "requestId": info.request_id,
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "user": info.user_hash,
                "code": info.error_code,
                "durationMs": _ms(time.monotonic() - info.started),
            })
        return response


def emit(fields: dict[str, Any]) -> None:
    """Write one line, leaving out the fields that have no value."""
    access_log.info("request", extra={"fields": {k: v for k, v in fields.items()
                                                  if v is not None}})


def stream_line(request_id: str, method: str, path: str, user_hash: str, command: str | None,
                started: float, outcome: str, first_token_at: float | None,
                tokens: int, fallback: str | None = None) -> None:
    """The line for a stream, written when its connection ends."""
    emit({
        "requestId": request_id,
        "method": method,
        "path": path,
        "status": 200,
        "user": user_hash,
        "command": command,
        "outcome": outcome,
        "ttftMs": _ms(first_token_at - started) if first_token_at is not None else None,
        "durationMs": _ms(time.monotonic() - started),
        "tokens": tokens,
        "fallback": fallback,
    })


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
