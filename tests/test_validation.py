"""Unit tests for POST /api/run validation (axrisi/web/validation.py) on real Flask requests."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from flask import Flask

from axrisi.commands import RunRequest
from axrisi.web.errors import ApiError
from axrisi.web.validation import MAX_SHORT_FIELD_CHARS, parse_run_request

APP = Flask(__name__)
MAX_TEXT = 100
MAX_BODY = 10_000
VALID = {"command": "summarize", "text": "Some text to summarize."}


def parse(data: bytes | None = None, content_type: str | None = "application/json",
          max_text: int = MAX_TEXT, max_body: int = MAX_BODY, **builder: Any) -> RunRequest:
    """Run parse_run_request on a real POST request built by werkzeug's EnvironBuilder."""
    if data is not None:
        builder["data"] = data
    if content_type is not None:
        builder["content_type"] = content_type
    with APP.test_request_context("/api/run", method="POST", **builder) as ctx:
        return parse_run_request(ctx.request, max_text, max_body)


def parse_json(body: Any, **kwargs: Any) -> RunRequest:
    """parse() with ``body`` serialized as JSON."""
    return parse(json.dumps(body).encode(), **kwargs)


def error_of(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    """The ApiError that ``call`` raises."""
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    return info.value


def names_field(message: str, field: str) -> bool:
    """True when ``message`` mentions ``field`` as a word."""
    return re.search(rf"\b{re.escape(field)}\b", message) is not None


def chunked(body: bytes) -> dict[str, Any]:
    """WSGI environ entries for a body without Content-Length, as gunicorn passes chunked ones."""
    return {"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True}


class UnreadableStream(io.RawIOBase):
    """A wsgi.input that records and refuses every read: the body must not be touched."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reads.append("read")
        raise AssertionError("the request body was read")

    def readinto(self, buffer: Any) -> int:
        self.reads.append("readinto")
        raise AssertionError("the request body was read")

    def readline(self, size: int | None = -1) -> bytes:
        self.reads.append("readline")
        raise AssertionError("the request body was read")


# --- 415 -----------------------------------------------------------------------------------


def test_no_content_type_is_415() -> None:
    """A body without Content-Type is 415 unsupported_media_type."""
    with APP.test_request_context("/api/run", method="POST",
                                  data=json.dumps(VALID).encode()) as ctx:
        assert "CONTENT_TYPE" not in ctx.request.environ
        error = error_of(parse_run_request, ctx.request, MAX_TEXT, MAX_BODY)
    assert (error.code, error.error_code) == (415, "unsupported_media_type")
    assert "application/json" in error.message


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
     "multipart/form-data; boundary=x", "application/jsonp", "text/json"],
)
def test_other_media_types_are_415(content_type: str) -> None:
    """A JSON body sent with a non-JSON Content-Type is 415 unsupported_media_type."""
    error = error_of(parse_json, VALID, content_type=content_type)
    assert (error.code, error.error_code) == (415, "unsupported_media_type")


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/json;charset=UTF-8",
     "Application/JSON"],
)
def test_json_media_types_are_accepted(content_type: str) -> None:
    """application/json, with or without parameters and in any case, is accepted."""
    assert parse_json(VALID, content_type=content_type) == RunRequest(**VALID)


# --- 413 -----------------------------------------------------------------------------------


def test_declared_length_over_limit_is_413_without_reading_the_body() -> None:
    """A Content-Length over max_body_bytes is 413 too_large before a byte of the body is read."""
    stream = UnreadableStream()
    error = error_of(parse, environ_overrides={"wsgi.input": stream,
                                               "CONTENT_LENGTH": str(MAX_BODY + 1)})
    assert (error.code, error.error_code) == (413, "too_large")
    assert str(MAX_BODY) in error.message
    assert stream.reads == []


def test_huge_declared_length_is_413_without_reading_the_body() -> None:
    """A 5 GB Content-Length is refused from the header alone."""
    stream = UnreadableStream()
    error = error_of(parse, environ_overrides={"wsgi.input": stream,
                                               "CONTENT_LENGTH": str(5 * 1024**3)})
    assert (error.code, error.error_code) == (413, "too_large")
    assert stream.reads == []


def test_body_exactly_at_limit_is_accepted() -> None:
    """A body of exactly max_body_bytes is read and accepted."""
    body = json.dumps(VALID).encode()
    body += b" " * (MAX_BODY - len(body))
    assert len(body) == MAX_BODY
    assert parse(body) == RunRequest(**VALID)


def test_body_one_byte_over_limit_is_413() -> None:
    """A body of max_body_bytes + 1 is 413 too_large."""
    body = json.dumps(VALID).encode()
    body += b" " * (MAX_BODY + 1 - len(body))
    error = error_of(parse, body)
    assert (error.code, error.error_code) == (413, "too_large")


def test_chunked_body_over_limit_is_413() -> None:
    """A body without Content-Length (chunked) is cut off at the limit with 413 too_large."""
    body = json.dumps(VALID).encode() + b" " * (MAX_BODY * 2)
    error = error_of(parse, environ_overrides=chunked(body))
    assert (error.code, error.error_code) == (413, "too_large")


def test_chunked_body_under_limit_is_accepted() -> None:
    """A chunked body under the limit is read and accepted."""
    body = json.dumps(VALID).encode()
    request = parse(environ_overrides=chunked(body))
    assert request == RunRequest(**VALID)


@pytest.mark.parametrize(("size", "accepted"), [(MAX_BODY, True), (MAX_BODY + 1, False)])
def test_chunked_body_at_the_limit(size: int, accepted: bool) -> None:
    """A chunked body of exactly max_body_bytes is accepted; one byte more is 413."""
    body = json.dumps(VALID).encode()
    body += b" " * (size - len(body))
    if accepted:
        assert parse(environ_overrides=chunked(body)) == RunRequest(**VALID)
    else:
        error = error_of(parse, environ_overrides=chunked(body))
        assert (error.code, error.error_code) == (413, "too_large")


def test_text_over_max_chars_is_413() -> None:
    """A text one character over max_text_chars is 413 too_large."""
    error = error_of(parse_json, {"command": "summarize", "text": "x" * (MAX_TEXT + 1)})
    assert (error.code, error.error_code) == (413, "too_large")
    assert str(MAX_TEXT) in error.message


def test_text_at_max_chars_is_accepted() -> None:
    """A text of exactly max_text_chars is accepted."""
    request = parse_json({"command": "summarize", "text": "x" * MAX_TEXT})
    assert request.text == "x" * MAX_TEXT


def test_text_limit_counts_characters_not_bytes() -> None:
    """The text limit is in characters: MAX_TEXT two-byte characters are accepted."""
    text = "\u00e9" * MAX_TEXT
    assert parse_json({"command": "summarize", "text": text}).text == text
    error = error_of(parse_json, {"command": "summarize", "text": "\U0001f600" * (MAX_TEXT + 1)})
    assert (error.code, error.error_code) == (413, "too_large")


# --- 400 invalid_json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"command": "summarize", "text": "hi"', id="truncated"),
        pytest.param(b"\xff\xfe{}", id="invalid-utf8"),
        pytest.param(b'{"command": "summarize", "text": "\xff\xfe"}', id="invalid-utf8-in-string"),
        pytest.param(b'[{"command": "summarize", "text": "hi"}]', id="array"),
        pytest.param(b'"summarize"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="bool"),
    ],
)
def test_invalid_json(body: bytes) -> None:
    """A body that is not a JSON object is 400 invalid_json with a sentence."""
    error = error_of(parse, body)
    assert (error.code, error.error_code) == (400, "invalid_json")
    assert error.message.endswith(".") and "JSON" in error.message


# --- 400 invalid_request -------------------------------------------------------------------


BAD_REQUIRED_VALUES = [
    pytest.param("missing", id="missing"),
    pytest.param(None, id="null"),
    pytest.param("", id="empty"),
    pytest.param("   \t\n ", id="whitespace"),
    pytest.param(5, id="number"),
    pytest.param(True, id="bool"),
    pytest.param(["summarize"], id="list"),
    pytest.param({"name": "summarize"}, id="object"),
]


@pytest.mark.parametrize("value", BAD_REQUIRED_VALUES)
@pytest.mark.parametrize(("field", "other"), [("command", "text"), ("text", "command")])
def test_bad_required_field(field: str, other: str, value: Any) -> None:
    """A missing, empty, blank or non-string command/text is 400 invalid_request naming it."""
    body = dict(VALID)
    if value == "missing":
        del body[field]
    else:
        body[field] = value
    error = error_of(parse_json, body)
    assert (error.code, error.error_code) == (400, "invalid_request")
    assert names_field(error.message, field), error.message
    assert not names_field(error.message, other), error.message


@pytest.mark.parametrize("command", ["summarise", "SUMMARIZE", "delete", "summarize "])
def test_unknown_command(command: str) -> None:
    """A command not in the catalog is 400 unknown_command, listing the valid ones."""
    error = error_of(parse_json, {"command": command, "text": "hi"})
    assert (error.code, error.error_code) == (400, "unknown_command")
    for name in ("summarize", "explain", "translate", "rewrite", "custom"):
        assert name in error.message


@pytest.mark.parametrize(
    ("command", "field", "value"),
    [
        ("translate", "language", "missing"),
        ("translate", "language", ""),
        ("translate", "language", "  "),
        ("translate", "language", None),
        ("custom", "instruction", "missing"),
        ("custom", "instruction", ""),
        ("custom", "instruction", "\n"),
        ("custom", "instruction", None),
    ],
)
def test_command_specific_required_field(command: str, field: str, value: Any) -> None:
    """translate without language and custom without instruction are invalid_request naming it."""
    body: dict[str, Any] = {"command": command, "text": "hi"}
    if value != "missing":
        body[field] = value
    error = error_of(parse_json, body)
    assert (error.code, error.error_code) == (400, "invalid_request")
    assert names_field(error.message, field), error.message


@pytest.mark.parametrize("field", ["title", "language", "instruction"])
@pytest.mark.parametrize("value", [5, 1.5, False, ["x"], {"x": 1}])
def test_non_string_optional_field(field: str, value: Any) -> None:
    """A non-string title/language/instruction is 400 invalid_request naming the field."""
    error = error_of(parse_json, {**VALID, field: value})
    assert (error.code, error.error_code) == (400, "invalid_request")
    assert names_field(error.message, field), error.message


@pytest.mark.parametrize("command", ["summarize", "translate", "custom"])
@pytest.mark.parametrize("field", ["title", "language", "instruction"])
def test_null_field_is_invalid_request(field: str, command: str) -> None:
    """A field present with JSON null is of the wrong type, whether or not the command needs
    it: 400 invalid_request naming it. (Absent stays fine where the field is optional.)"""
    body = {"command": command, "text": "hi", "language": "French", "instruction": "Shorten."}
    assert parse_json(body).command == command
    error = error_of(parse_json, {**body, field: None})
    assert (error.code, error.error_code) == (400, "invalid_request")
    assert names_field(error.message, field), error.message
    assert "null" in error.message


@pytest.mark.parametrize("field", sorted(MAX_SHORT_FIELD_CHARS))
def test_over_long_short_field(field: str) -> None:
    """A title/language/instruction over its limit is 400 invalid_request naming the field."""
    limit = MAX_SHORT_FIELD_CHARS[field]
    error = error_of(parse_json, {**VALID, field: "y" * (limit + 1)})
    assert (error.code, error.error_code) == (400, "invalid_request")
    assert names_field(error.message, field), error.message
    assert parse_json({**VALID, field: "y" * limit}) == RunRequest(**VALID, **{field: "y" * limit})


def test_title_limit_is_1000() -> None:
    """A 1001-character title is refused and a 1000-character one accepted."""
    assert MAX_SHORT_FIELD_CHARS["title"] == 1000
    error = error_of(parse_json, {**VALID, "title": "t" * 1001})
    assert (error.code, error.error_code) == (400, "invalid_request")
    assert parse_json({**VALID, "title": "t" * 1000}).title == "t" * 1000


# --- bodies that cannot be read whole ----------------------------------------------------------


def gunicorn_body(framing: bytes, data: bytes) -> Any:
    """The wsgi.input gunicorn 27 hands the app: its real parser's Body over ``data``, which
    ends (as a half-closed socket does) after the given bytes."""
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser

    head = b"POST /api/run HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n"
    parsed = next(RequestParser(Config(), [head + data], ("127.0.0.1", 1)))
    return parsed.body


CHUNK = b"%x\r\n%s" % (len(json.dumps(VALID)), json.dumps(VALID).encode())

MALFORMED_CHUNKED = [
    pytest.param(b"zz\r\n" + json.dumps(VALID).encode() + b"\r\n0\r\n\r\n", id="bad-size"),
    pytest.param(b"5;=\r\nhello\r\n0\r\n\r\n", id="bad-extension"),
    pytest.param(CHUNK + b"XX0\r\n\r\n", id="no-crlf-after-data"),
    pytest.param(CHUNK + b"\r\n0\r\nnot a header\r\n\r\n", id="bad-trailer"),
    pytest.param(CHUNK + b"\r\n", id="no-last-chunk"),
    pytest.param(CHUNK + b"\r\n0\r\n", id="last-chunk-without-crlf"),
    pytest.param(b"100\r\n" + json.dumps(VALID).encode(), id="chunk-shorter-than-announced"),
    pytest.param(CHUNK, id="data-then-eof"),
]


def test_gunicorn_body_reads_a_valid_chunked_body() -> None:
    """The helper's real gunicorn body works for a well-formed chunked request."""
    body = gunicorn_body(b"Transfer-Encoding: chunked", CHUNK + b"\r\n0\r\n\r\n")
    request = parse(environ_overrides={"wsgi.input": body, "wsgi.input_terminated": True},
                    headers={"Transfer-Encoding": "chunked"})
    assert request == RunRequest(**VALID)


@pytest.mark.parametrize("data", MALFORMED_CHUNKED)
def test_malformed_chunked_body_is_invalid_request(data: bytes) -> None:
    """What gunicorn's ChunkedReader raises for bad framing (its ParseException subclasses) or
    an early EOF (NoMoreData, which werkzeug turns into ClientDisconnected) is 400
    invalid_request, not a 500."""
    body = gunicorn_body(b"Transfer-Encoding: chunked", data)
    error = error_of(parse, environ_overrides={"wsgi.input": body,
                                               "wsgi.input_terminated": True},
                     headers={"Transfer-Encoding": "chunked"})
    assert (error.code, error.error_code) == (400, "invalid_request")
    assert "chunked" in error.message and error.message.endswith(".")


@pytest.mark.parametrize("terminated", [True, False], ids=["gunicorn", "plain-wsgi"])
def test_body_shorter_than_content_length_is_invalid_request(terminated: bool) -> None:
    """A body that ends before its Content-Length is 400 invalid_request, not parsed as if it
    were whole (under gunicorn the read is simply short; elsewhere werkzeug raises
    ClientDisconnected)."""
    raw = json.dumps(VALID).encode()
    announced = len(raw) + 10
    environ: dict[str, Any] = {"CONTENT_LENGTH": str(announced)}
    if terminated:  # as gunicorn: its own body reader, and wsgi.input_terminated
        environ["wsgi.input"] = gunicorn_body(b"Content-Length: %d" % announced, raw)
        environ["wsgi.input_terminated"] = True
    else:
        environ["wsgi.input"] = io.BytesIO(raw)
    error = error_of(parse, environ_overrides=environ)
    assert (error.code, error.error_code) == (400, "invalid_request")
    assert "Content-Length" in error.message and error.message.endswith(".")


# --- valid requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"command": "summarize", "text": "A text."},
         RunRequest("summarize", "A text.")),
        ({"command": "summarize", "text": "A text.", "title": "Page"},
         RunRequest("summarize", "A text.", title="Page")),
        ({"command": "translate", "text": "Bonjour", "language": "English", "title": "T"},
         RunRequest("translate", "Bonjour", title="T", language="English")),
        ({"command": "custom", "text": "x", "instruction": "Count {words}."},
         RunRequest("custom", "x", instruction="Count {words}.")),
        ({"command": "explain", "text": "  padded \n", "title": "   "},
         RunRequest("explain", "  padded \n")),
        ({"command": "rewrite", "text": "r", "title": "", "language": " "},
         RunRequest("rewrite", "r")),
        ({"command": "rewrite", "text": "r", "extra": [1, 2], "stream": True},
         RunRequest("rewrite", "r")),
        ({"command": "summarize", "text": "\u00fcn\u00efc\u00f6d\u00e9 \U0001f600\n\nlines"},
         RunRequest("summarize", "\u00fcn\u00efc\u00f6d\u00e9 \U0001f600\n\nlines")),
    ],
)
def test_valid_request(body: dict[str, Any], expected: RunRequest) -> None:
    """A valid body returns the RunRequest with its fields (text verbatim, blank optionals None)."""
    assert parse_json(body) == expected


def test_valid_request_with_utf8_body_and_charset() -> None:
    """A UTF-8 body with non-ASCII text and a charset parameter parses to the same text."""
    body = json.dumps({"command": "summarize", "text": "\u65e5\u672c\u8a9e"},
                      ensure_ascii=False).encode()
    request = parse(body, content_type="application/json; charset=utf-8")
    assert request == RunRequest("summarize", "\u65e5\u672c\u8a9e")


def test_errors_are_api_errors_with_a_sentence() -> None:
    """Validation errors are ApiError with an int status, a code and a non-empty sentence."""
    error = error_of(parse_json, {"command": "summarize"})
    assert isinstance(error, ApiError)
    assert isinstance(error.code, int)
    assert error.message and error.message[0].isupper() and error.message.endswith(".")
