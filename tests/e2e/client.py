"""Test clients: tokens as an identity provider would mint them, and an SSE connection that the
test can read event by event and then drop, like a browser tab being closed."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import jwt
import requests

from tests.sse_client import Event, Parser

from .servers import TEST_AUDIENCE, TEST_ISSUER, TEST_SECRET


def make_token(sub: Any = "alice", *, secret: str = TEST_SECRET, algorithm: str = "HS256",
               expires_in: float = 3600, headers: dict[str, Any] | None = None,
               **claims: Any) -> str:
    """A signed JWT; ``claims`` override or (with value None) remove the defaults."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(expires_in),
                               "aud": TEST_AUDIENCE, "iss": TEST_ISSUER}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm=algorithm, headers=headers)


def auth(token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or make_token()}"}


def post_run(base_url: str, body: dict[str, Any], user: str = "alice",
             timeout: float = 10.0) -> requests.Response:
    """One ``POST /api/run`` as ``user``, read whole: for tests of statuses and limits."""
    return requests.post(base_url + "/api/run", json=body, timeout=timeout,
                         headers={"Authorization": f"Bearer {make_token(user)}"})


class SSEConnection:
    """One ``POST /api/run`` (or a GET) over its own TCP connection, read incrementally."""

    def __init__(self, base_url: str, body: dict[str, Any] | None = None, *,
                 token: str | None = None, method: str = "POST", path: str = "/api/run",
                 headers: dict[str, str] | None = None, timeout: float = 10.0) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        all_headers = {**auth(token), "Content-Type": "application/json", **(headers or {})}
        payload = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=payload, headers=all_headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers
        self.parser = Parser()
        self.raw = b""
        self._ready: list[Event] = []

    def events(self) -> Iterator[Event]:
        """Events as they arrive, until the server ends the response."""
        while True:
            while self._ready:
                yield self._ready.pop(0)
            chunk = self.response.read1(65536)
            if not chunk:
                return
            self.raw += chunk
            self._ready.extend(self.parser.feed(chunk))

    def read_until(self, predicate: Any, limit: int = 100_000) -> list[Event]:
        """Read events until ``predicate(event)`` holds; returns all read so far."""
        seen = []
        for event in self.events():
            seen.append(event)
            if predicate(event) or len(seen) >= limit:
                break
        return seen

    def read_all(self) -> list[Event]:
        return list(self.events())

    def drop(self) -> float:
        """Close the TCP connection abruptly, as a closed tab does; returns when (monotonic)."""
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conn.close()
        self.response.close()
        return time.monotonic()

    def close(self) -> None:
        self.drop()


def content_of(events: list[Event]) -> str:
    """The stream's text: its content events joined in order."""
    return "".join(e.json["content"] for e in events if e.event == "message"
                   and "content" in e.json)


def read_http_reply(sock: socket.socket, timeout: float = 5.0) -> tuple[str, bytes]:
    """Read one HTTP/1.1 reply with a Content-Length from a raw socket: (head, body)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head.decode("latin-1"), body


def raw_post_head(content_length: int, authorization: str | None = None) -> bytes:
    """The head of a ``POST /api/run`` written by hand, for tests that control every byte
    (a body announced but never sent, a client that stops reading)."""
    authorization = authorization or auth()["Authorization"]
    return (f"POST /api/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: {authorization}\r\nContent-Length: {content_length}\r\n\r\n"
            ).encode()
