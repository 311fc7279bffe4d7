"""Every authentication failure gets the same 401, before the body is read, through gunicorn."""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, content_of, make_token, raw_post_head, read_http_reply
from .servers import TEST_AUDIENCE, TEST_ISSUER, Gunicorn
from .test_stream import run_body, unique_key

UNAUTHORIZED = {"error": "Unauthorized", "code": "unauthorized"}


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def alg_none_token() -> str:
    now = int(time.time())
    claims = {"sub": "alice", "exp": now + 600, "aud": TEST_AUDIENCE, "iss": TEST_ISSUER}
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


BAD_AUTHORIZATIONS = {
    "no header": None,
    "basic scheme": "Basic YWxpY2U6c2VjcmV0",
    "bearer without token": "Bearer",
    "bearer blank": "Bearer ",
    "malformed": "Bearer not.a.jwt",
    "garbage": "Bearer abc",
    "bad signature": f"Bearer {make_token(secret='another-secret-0123456789-0123456789')}",
    "alg none": f"Bearer {alg_none_token()}",
    "expired": f"Bearer {make_token(expires_in=-120)}",
    "wrong audience": f"Bearer {make_token(aud='someone-else')}",
    "wrong issuer": f"Bearer {make_token(iss='https://evil.example')}",
    "refresh token": f"Bearer {make_token(type='refresh')}",
    "no exp": f"Bearer {make_token(exp=None)}",
    "no sub": f"Bearer {make_token(sub=None)}",
    "numeric sub": f"Bearer {make_token(sub=42)}",
    "empty sub": f"Bearer {make_token(sub='')}",
}


@pytest.mark.parametrize("reason", list(BAD_AUTHORIZATIONS))
@pytest.mark.parametrize("path", ["/api/run", "/api/commands"])
def test_every_failure_is_the_same_401(server: Gunicorn, reason: str, path: str) -> None:
    """Each way a token can be wrong answers 401 with the one body and WWW-Authenticate."""
    value = BAD_AUTHORIZATIONS[reason]
    headers = {"Content-Type": "application/json"}
    if value is not None:
        headers["Authorization"] = value
    method = requests.post if path == "/api/run" else requests.get
    response = method(server.url + path, headers=headers, timeout=5,
                      **({"json": run_body("x")} if path == "/api/run" else {}))
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_valid_token_without_type_is_access(server: Gunicorn, upstream: FakeUpstream) -> None:
    """A token from an outside issuer (no 'type' claim) is accepted as an access token."""
    key = unique_key("auth-ok")
    upstream.add_scenario(key, Scenario(tokens=["ok"]))
    conn = SSEConnection(server.url, run_body(key), token=make_token("bob"))
    assert conn.status == 200 and content_of(conn.read_all()) == "ok"


def test_401_before_the_body_is_read(server: Gunicorn) -> None:
    """A bad token with a 5 MB body still gets 401, answered before the body is sent."""
    size = 5 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw_post_head(size, "Bearer nope") + b"{")
        head, body = read_http_reply(sock)
    assert head.startswith("HTTP/1.1 401")
    assert json.loads(body) == UNAUTHORIZED


def _pem_pair(kind: str) -> tuple[bytes, str]:
    if kind == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public.decode()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_outside_identity_provider_keys(upstream: FakeUpstream, algorithm: str) -> None:
    """With JWT_PUBLIC_KEY + JWT_ALGORITHM, the provider's tokens pass and HS256 ones do not."""
    private, public = _pem_pair(algorithm)
    env = {"JWT_SECRET_KEY": None, "JWT_PUBLIC_KEY": public, "JWT_ALGORITHM": algorithm,
           "OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k"}
    with Gunicorn(env) as gunicorn:
        good = make_token("carol", secret=private, algorithm=algorithm)
        ok = requests.get(gunicorn.url + "/api/commands",
                          headers={"Authorization": f"Bearer {good}"}, timeout=5)
        forged = make_token("carol")  # HS256 with a shared secret: must not pass
        bad = requests.get(gunicorn.url + "/api/commands",
                           headers={"Authorization": f"Bearer {forged}"}, timeout=5)
    assert ok.status_code == 200
    assert bad.status_code == 401 and bad.json() == UNAUTHORIZED
