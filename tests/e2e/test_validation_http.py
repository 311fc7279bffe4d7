"""Each validation error of the contract's table, through the real server."""

from __future__ import annotations

import json
import socket
import struct
import time
import uuid

import pytest
import requests

from .client import auth, raw_post_head, read_http_reply
from .servers import Gunicorn


def post(server: Gunicorn, data: bytes | str, content_type: str | None = "application/json",
         ) -> requests.Response:
    headers = auth()
    if content_type is not None:
        headers["Content-Type"] = content_type
    return requests.post(server.url + "/api/run", data=data, headers=headers, timeout=10)


CASES = [
    ("not json", b"{nope", "application/json", 400, "invalid_json"),
    ("json array", b"[1, 2]", "application/json", 400, "invalid_json"),
    ("invalid utf-8", b'{"command": "summarize", "text": "\xff"}', "application/json", 400,
     "invalid_json"),
    ("missing command", b'{"text": "hi"}', "application/json", 400, "invalid_request"),
    ("missing text", b'{"command": "summarize"}', "application/json", 400, "invalid_request"),
    ("empty text", b'{"command": "summarize", "text": "  "}', "application/json", 400,
     "invalid_request"),
    ("text not a string", b'{"command": "summarize", "text": 5}', "application/json", 400,
     "invalid_request"),
    ("unknown command", b'{"command": "dance", "text": "hi"}', "application/json", 400,
     "unknown_command"),
    ("translate without language", b'{"command": "translate", "text": "hi"}',
     "application/json", 400, "invalid_request"),
    ("custom without instruction", b'{"command": "custom", "text": "hi"}', "application/json",
     400, "invalid_request"),
    ("text/plain", b'{"command": "summarize", "text": "hi"}', "text/plain", 415,
     "unsupported_media_type"),
    ("no content type", b'{"command": "summarize", "text": "hi"}', None, 415,
     "unsupported_media_type"),
    ("form", b"command=summarize", "application/x-www-form-urlencoded", 415,
     "unsupported_media_type"),
]


@pytest.mark.parametrize(("name", "body", "content_type", "status", "code"), CASES,
                         ids=[c[0] for c in CASES])
def test_validation_errors(server: Gunicorn, name: str, body: bytes, content_type: str | None,
                           status: int, code: str) -> None:
    """The status and code of the contract, and a sentence a person can act on."""
    response = post(server, body, content_type)
    assert response.status_code == status
    payload = response.json()
    assert payload["code"] == code
    assert isinstance(payload["error"], str) and payload["error"].endswith(".")
    assert response.headers["Content-Type"] == "application/json"


def test_the_sentence_names_the_field(server: Gunicorn) -> None:
    """A missing field is named in the error sentence."""
    assert "language" in post(server, b'{"command": "translate", "text": "hi"}').json()["error"]
    assert "text" in post(server, b'{"command": "summarize"}').json()["error"]


def test_text_over_the_limit(server: Gunicorn) -> None:
    """A text of 50,001 characters (the default limit is 50,000) answers 413 too_large."""
    body = json.dumps({"command": "summarize", "text": "a" * 50_001})
    response = post(server, body)
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    ok = json.dumps({"command": "summarize", "text": "a" * 50_000})
    assert post(server, ok).status_code == 200


def test_five_megabyte_body_refused_unread(server: Gunicorn) -> None:
    """A 5 MB body is refused with 413 from its Content-Length, before it is sent."""
    size = 5 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw_post_head(size) + b'{"command": "summarize", "text": "')
        head, body = read_http_reply(sock)
    assert head.startswith("HTTP/1.1 413")
    assert json.loads(body)["code"] == "too_large"


def test_chunked_body_over_the_limit(server: Gunicorn) -> None:
    """A chunked upload with no Content-Length is cut off at the limit with 413."""
    def chunks():
        yield b'{"command": "summarize", "text": "'
        for _ in range(100):
            yield b"a" * 65536
        yield b'"}'

    response = requests.post(server.url + "/api/run", data=chunks(), timeout=20,
                             headers={**auth(), "Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "too_large"


def test_unknown_path_is_json_404(server: Gunicorn) -> None:
    """Unknown addresses answer in the same JSON shape."""
    response = requests.get(server.url + "/nope", timeout=5)
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_wrong_method_is_json_405(server: Gunicorn) -> None:
    """GET /api/run answers 405 in the JSON shape."""
    response = requests.get(server.url + "/api/run", headers=auth(), timeout=5)
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"


# --- fields present with JSON null -----------------------------------------------------------


@pytest.mark.parametrize(("field", "command"), [("title", "summarize"), ("language", "translate"),
                                                ("language", "summarize"),
                                                ("instruction", "custom")])
def test_null_field_is_invalid_request_naming_it(server: Gunicorn, field: str,
                                                 command: str) -> None:
    """A field sent as JSON null is of the wrong type: 400 invalid_request naming the field
    (absent is fine where the field is optional; null is not absent)."""
    body = {"command": command, "text": "hi", "language": "French", "instruction": "Shorten.",
            field: None}
    response = post(server, json.dumps(body))
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "invalid_request"
    assert field in payload["error"] and payload["error"].endswith(".")


def test_absent_optional_fields_are_fine(server: Gunicorn) -> None:
    """The same request with the optional fields left out streams (200)."""
    response = post(server, json.dumps({"command": "summarize", "text": "hi"}))
    assert response.status_code == 200


# --- malformed and truncated request bodies ------------------------------------------------


def raw_head(framing: str, request_id: str) -> bytes:
    """The head of a ``POST /api/run`` with the given framing header, written by hand."""
    return (f"POST /api/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: {auth()['Authorization']}\r\nX-Request-ID: {request_id}\r\n"
            f"{framing}\r\n\r\n").encode()


def log_lines_of(server: Gunicorn, request_id: str, within: float = 3.0) -> list[str]:
    """The server's access-log lines for ``request_id`` (waiting up to ``within`` for one)."""
    deadline = time.monotonic() + within
    while True:
        lines = [line for line in server.log().splitlines() if request_id in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def assert_no_trace_since(server: Gunicorn, offset: int) -> None:
    """Nothing the server logged after ``offset`` is a stack trace or a 500."""
    logged = server.log()[offset:]
    assert "Traceback" not in logged, logged
    assert "unhandled error" not in logged, logged
    assert '"status":500' not in logged, logged


RUN_BODY = b'{"command": "summarize", "text": "hi"}'
CHUNK = b"%x\r\n%s" % (len(RUN_BODY), RUN_BODY)

MALFORMED_CHUNKED = [
    # (id, bytes after the head, half-close after sending)
    ("bad chunk size", b"zz\r\n" + RUN_BODY + b"\r\n0\r\n\r\n", False),
    ("bad chunk extension", b"%x;=\r\n%s\r\n0\r\n\r\n" % (len(RUN_BODY), RUN_BODY), False),
    ("no CRLF after the chunk data", CHUNK + b"XX0\r\n\r\n", False),
    ("bad trailer", CHUNK + b"\r\n0\r\nnot a header\r\n\r\n", False),
    ("no last chunk, then half-close", CHUNK + b"\r\n", True),
    ("last chunk without its CRLF, then half-close", CHUNK + b"\r\n0\r\n", True),
    ("chunk shorter than announced, then half-close", b"100\r\n" + RUN_BODY, True),
    ("chunk data without CRLF, then half-close", CHUNK, True),
]


@pytest.mark.parametrize(("name", "data", "half_close"), MALFORMED_CHUNKED,
                         ids=[c[0] for c in MALFORMED_CHUNKED])
def test_malformed_chunked_body_is_400(server: Gunicorn, name: str, data: bytes,
                                       half_close: bool) -> None:
    """A body that is not valid chunked encoding answers 400 invalid_request with a sentence,
    and the server logs no stack trace (gunicorn's ChunkedReader raises its ParseException
    subclasses, or NoMoreData at EOF, through werkzeug's get_data)."""
    request_id = f"chunked-{uuid.uuid4().hex}"
    offset = len(server.log())
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw_head("Transfer-Encoding: chunked", request_id) + data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        head, body = read_http_reply(sock)
    assert head.startswith("HTTP/1.1 400"), head
    payload = json.loads(body)
    assert payload["code"] == "invalid_request"
    assert "chunked" in payload["error"] and payload["error"].endswith(".")
    assert log_lines_of(server, request_id)
    assert_no_trace_since(server, offset)


def test_body_shorter_than_its_content_length_is_400(server: Gunicorn) -> None:
    """A client that sends less than its Content-Length and half-closes gets 400
    invalid_request: the truncated bytes are not taken for the whole body (they were, and a
    JSON prefix that happened to parse started a stream)."""
    request_id = f"short-{uuid.uuid4().hex}"
    offset = len(server.log())
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw_head(f"Content-Length: {len(RUN_BODY) + 100}", request_id) + RUN_BODY)
        sock.shutdown(socket.SHUT_WR)
        head, body = read_http_reply(sock)
    assert head.startswith("HTTP/1.1 400"), head
    payload = json.loads(body)
    assert payload["code"] == "invalid_request" and payload["error"].endswith(".")
    assert log_lines_of(server, request_id)
    assert_no_trace_since(server, offset)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_gone_mid_body_logs_no_trace(server: Gunicorn, framing: str) -> None:
    """A client that resets the connection in the middle of its body: no 500, no stack trace
    (a 400 that nobody reads, or a closed connection, are both fine)."""
    request_id = f"gone-{uuid.uuid4().hex}"
    offset = len(server.log())
    if framing == "chunked":
        head, data = raw_head("Transfer-Encoding: chunked", request_id), b"100\r\n" + RUN_BODY
    else:
        head, data = raw_head("Content-Length: 1000", request_id), RUN_BODY
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(head + data)
    time.sleep(0.2)  # the server is now waiting for the rest of the body
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    lines = log_lines_of(server, request_id)
    assert all('"status":400' in line for line in lines), lines
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    assert_no_trace_since(server, offset)
