"""Tokens signed by an identity provider whose keys come from its JWKS document.

A JWKS server on loopback that the tests control (its keys, its failures, its request count);
RS256 and ES256 keys made here with ``cryptography``; tokens signed with them as Auth0 or
Keycloak would. Every failure must be the contract's one 401.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .servers import TEST_AUDIENCE, TEST_ISSUER, Gunicorn, free_port


class JwksServer:
    """Serves ``document`` (a dict, or raw bytes) at /jwks; counts requests; can go down."""

    def __init__(self) -> None:
        self.document: dict[str, Any] | bytes = {"keys": []}
        self.requests = 0
        self.fetched_at: list[float] = []  # time.monotonic() of each request
        self.port = free_port()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.requests += 1
                owner.fetched_at.append(time.monotonic())
                body = owner.document if isinstance(owner.document, bytes) else \
                    json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


class SigningKey:
    """A private key with its ``kid``, its algorithm and its public JWK."""

    def __init__(self, algorithm: str) -> None:
        self.kid = f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}"
        self.algorithm = algorithm
        if algorithm == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            public = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk = {**public, "kid": self.kid, "use": "sig", "alg": algorithm}

    def token(self, sub: str = "alice", kid: str | None = None, with_kid: bool = True) -> str:
        now = int(time.time())
        claims = {"sub": sub, "iat": now, "exp": now + 600, "aud": TEST_AUDIENCE,
                  "iss": TEST_ISSUER}
        headers = {"kid": kid or self.kid} if with_kid else None
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers=headers)


CACHE, REFETCH = 2.0, 1.0


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {name: SigningKey(alg) for name, alg in
            (("rsa", "RS256"), ("ec", "ES256"), ("rotated", "RS256"))}


@pytest.fixture(scope="module")
def jwks(keys: dict[str, SigningKey]) -> Iterator[JwksServer]:
    server = JwksServer()
    server.document = {"keys": [keys["rsa"].jwk, keys["ec"].jwk]}
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(jwks: JwksServer) -> Iterator[Gunicorn]:
    env = {"JWT_JWKS_URL": jwks.url, "JWT_ALGORITHM": "RS256,ES256", "JWT_SECRET_KEY": None,
           "AXRISI_JWKS_CACHE_SECONDS": str(CACHE), "AXRISI_JWKS_REFETCH_SECONDS": str(REFETCH),
           "AXRISI_AUTH_FAILURE_LIMIT": "100000/minute"}
    with Gunicorn(env) as server:  # type: ignore[arg-type]  # None removes a default
        yield server


def status(service: Gunicorn, token: str) -> int:
    return requests.get(service.url + "/api/commands", timeout=10,
                        headers={"Authorization": f"Bearer {token}"}).status_code


def test_rs256_and_es256_tokens_are_accepted(service: Gunicorn,
                                             keys: dict[str, SigningKey]) -> None:
    assert status(service, keys["rsa"].token()) == 200
    assert status(service, keys["ec"].token()) == 200


def test_bad_tokens_are_the_one_401(service: Gunicorn, keys: dict[str, SigningKey]) -> None:
    forged = SigningKey("RS256")  # a key the provider never published, under a known kid
    hs = jwt.encode({"sub": "x", "exp": int(time.time()) + 60, "aud": TEST_AUDIENCE,
                     "iss": TEST_ISSUER}, "s" * 40, algorithm="HS256",
                    headers={"kid": keys["rsa"].kid})
    for token in (forged.token(kid=keys["rsa"].kid), hs, keys["rsa"].token(with_kid=False),
                  "not.a.token"):
        answer = requests.get(service.url + "/api/commands", timeout=10,
                              headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401
        assert answer.json() == {"error": "Unauthorized", "code": "unauthorized"}


def test_made_up_kids_do_not_flood_the_jwks_host(service: Gunicorn, jwks: JwksServer,
                                                keys: dict[str, SigningKey]) -> None:
    time.sleep(REFETCH + 0.1)
    before = jwks.requests
    started = time.monotonic()
    for n in range(40):
        assert status(service, keys["rsa"].token(kid=f"made-up-{n}")) == 401
    elapsed = time.monotonic() - started
    # At most one fetch per refetch interval (and the cache's own expiry).
    assert jwks.requests - before <= 2 + int(elapsed / REFETCH)


def test_a_rotation_is_followed(service: Gunicorn, jwks: JwksServer,
                                keys: dict[str, SigningKey]) -> None:
    jwks.document = {"keys": [keys["rotated"].jwk, keys["ec"].jwk]}  # new key in, old out
    time.sleep(REFETCH + 0.1)
    assert status(service, keys["rotated"].token()) == 200  # unknown kid: one refetch
    time.sleep(CACHE + 0.1)
    assert status(service, keys["ec"].token()) == 200  # the cache expired: fetched again
    assert status(service, keys["rsa"].token()) == 401  # the removed key is gone


def test_keys_keep_working_while_the_jwks_host_is_down_or_broken(
        service: Gunicorn, jwks: JwksServer, keys: dict[str, SigningKey]) -> None:
    jwks.document = {"keys": [keys["rotated"].jwk, keys["ec"].jwk]}
    time.sleep(CACHE + 0.1)
    assert status(service, keys["ec"].token()) == 200
    for broken in (b"<html>not json</html>", b'{"keys": "nope"}', b'{"keys": []}'):
        jwks.document = broken
        time.sleep(CACHE + 0.1)
        assert status(service, keys["ec"].token()) == 200, broken
        assert status(service, keys["rotated"].token()) == 200, broken
    jwks.stop()
    try:
        time.sleep(CACHE + 0.1)
        assert status(service, keys["ec"].token()) == 200
        assert status(service, SigningKey("ES256").token()) == 401
    finally:
        jwks.document = {"keys": [keys["rotated"].jwk, keys["ec"].jwk]}
        jwks.start()


def test_a_new_key_is_accepted_within_5_s_by_default(keys: dict[str, SigningKey]) -> None:
    """The contract's rule with no setting: an unknown ``kid`` refetches the document at most
    once per 5 s per worker, so a key published just after a fetch is accepted once 5 s have
    passed since that fetch (it was 30 s), and the refused attempts meanwhile fetch nothing."""
    server = JwksServer()
    server.document = {"keys": [keys["rsa"].jwk]}
    server.start()
    env = {"JWT_JWKS_URL": server.url, "JWT_ALGORITHM": "RS256,ES256", "JWT_SECRET_KEY": None,
           "AXRISI_AUTH_FAILURE_LIMIT": "100000/minute"}
    try:
        with Gunicorn(env) as service:  # type: ignore[arg-type]  # None removes a default
            asked_at = time.monotonic()  # the service starts its first fetch after this
            assert status(service, keys["rsa"].token()) == 200  # the first fetch
            assert server.requests == 1
            server.document = {"keys": [keys["rsa"].jwk, keys["rotated"].jwk]}  # published
            answers = []
            deadline = server.fetched_at[0] + 15
            while time.monotonic() < deadline:
                answers.append(status(service, keys["rotated"].token()))
                if answers[-1] == 200:
                    break
                time.sleep(0.2)
            assert answers[-1] == 200 and answers[0] == 401
            assert server.requests == 2  # one refetch for all the attempts
            # The rate of refetches holds: the service's clock starts when it begins a fetch,
            # which the server sees a moment later, so the bound is from before the first ask
            # (the two fetches' travel times differ by a few ms on a loaded machine).
            assert server.fetched_at[1] - asked_at >= 5.0
            # ...and a new key waits for it, not for 30 s.
            assert server.fetched_at[1] - server.fetched_at[0] < 10.0
    finally:
        server.stop()
