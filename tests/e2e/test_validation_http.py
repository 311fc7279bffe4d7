"""Each validation error of the contract's table, through the real server."""

from __future__ import annotations

import json
import socket

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
