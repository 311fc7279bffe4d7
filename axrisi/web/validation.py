"""Turns a ``POST /api/run`` request into a :class:`RunRequest`, or into the contract's 4xx.

The checks run cheapest first and the body is touched last: the media type and the declared
length are judged from the headers, so a 5 MB upload is refused with 413 before a byte of it is
read, and a chunked upload is cut off at the limit (werkzeug's ``max_content_length``).

A body that cannot be read whole is the client's error, never a 500: gunicorn's ``ChunkedReader``
raises its own ``ParseException`` subclasses for bad chunked framing (``InvalidChunkSize``,
``InvalidChunkExtension``, ``ChunkMissingTerminator``, and ``InvalidHeader`` and the like for
bad trailers), which werkzeug lets through; an EOF or a reset in the middle of the body (gunicorn's
``NoMoreData``, an ``OSError``) reaches us as werkzeug's ``ClientDisconnected``; and a body of
known length that simply ends early reads short without any error at all.
"""

from __future__ import annotations

from typing import Any

from flask import Request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from .. import jsonutil
from ..commands import CATALOG, RunRequest
from .errors import ApiError

MAX_SHORT_FIELD_CHARS = {"title": 1000, "language": 100, "instruction": 4000}

NOT_CHUNKED = "The request body is not valid chunked encoding."
CHUNKED_CUT_SHORT = ("The request body is not valid chunked encoding: "
                     "it ended before its last chunk.")


def parse_run_request(request: Request, max_text_chars: int, max_body_bytes: int) -> RunRequest:
    """Validate media type, size and fields; raise :class:`ApiError` with an actionable sentence."""
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "Send the request body as JSON with Content-Type: application/json.")
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise _too_large(f"The request body must be at most {max_body_bytes} bytes.")
    # One byte over the limit is read, so that a chunked body that is too long is told apart
    # from one that is exactly at the limit (werkzeug truncates silently at the limit).
    request.max_content_length = max_body_bytes + 1
    too_large = _too_large(f"The request body must be at most {max_body_bytes} bytes.")
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise too_large from None
    except ParseException:
        raise _invalid(NOT_CHUNKED) from None
    except ClientDisconnected:
        raise _incomplete(request) from None
    if len(raw) > max_body_bytes:
        raise too_large
    if request.content_length is not None and len(raw) < request.content_length:
        raise _incomplete(request)
    body = _parse_json(raw)
    return _fields(body, max_text_chars)


def _too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message)


def _incomplete(request: Request) -> ApiError:
    """The body ended (EOF or reset) before its Content-Length or its last chunk."""
    if request.content_length is None:  # chunked: it never sent its terminating 0-size chunk
        return _invalid(CHUNKED_CUT_SHORT)
    return _invalid(f"The request body ended before the {request.content_length} bytes "
                    "its Content-Length announced.")


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = jsonutil.loads(raw)
    except jsonutil.JSONDecodeError:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return body


def _fields(body: dict[str, Any], max_text_chars: int) -> RunRequest:
    command = _string(body, "command", required=True)
    text = _string(body, "text", required=True)
    assert command is not None and text is not None
    if command not in CATALOG:
        names = ", ".join(CATALOG)
        raise ApiError(400, "unknown_command",
                       f"Unknown command {command[:40]!r}; use one of: {names}.")
    if len(text) > max_text_chars:
        raise _too_large(f"The text must be at most {max_text_chars} characters long.")
    optional = {name: _string(body, name, required=name in CATALOG[command].requires)
                for name in MAX_SHORT_FIELD_CHARS}
    return RunRequest(command=command, text=text, **optional,
                      background=_boolean(body, "background"),
                      reasoning=_boolean(body, "reasoning"))


def _boolean(body: dict[str, Any], name: str) -> bool:
    """An optional flag: absent is false; anything but a JSON boolean is an error (a string
    ``"false"`` would otherwise read as true)."""
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise _invalid(f"The field '{name}' must be true or false.")
    return value


def _string(body: dict[str, Any], name: str, required: bool) -> str | None:
    """A string field: absent or blank is an error only when required; present with another
    type (JSON null included: null is a value, not an absence) always is."""
    if name not in body:
        if required:
            raise _invalid(f"The field '{name}' is required.")
        return None
    value = body[name]
    if value is None:
        hint = "" if required else "; leave it out when there is none"
        raise _invalid(f"The field '{name}' must be a string, not null{hint}.")
    if not isinstance(value, str):
        raise _invalid(f"The field '{name}' must be a string.")
    if not value.strip():
        if required:
            raise _invalid(f"The field '{name}' must not be empty.")
        return None
    limit = MAX_SHORT_FIELD_CHARS.get(name)
    if limit is not None and len(value) > limit:
        raise _invalid(f"The field '{name}' must be at most {limit} characters long.")
    return value


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)
