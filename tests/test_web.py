"""The demo page's blueprint and CORS for /api/*, through Flask's test client (no browser)."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from axrisi import create_app
from axrisi.config import Settings

SECRET = "unit-test-secret-0123456789-0123456789"
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type,last-event-id"}


def client(**settings: object) -> FlaskClient:
    values: dict[str, object] = {"jwt_secret_key": SECRET, **settings}
    return create_app(Settings(**values)).test_client()  # type: ignore[arg-type]


def names(response: TestResponse, header: str) -> set[str]:
    """A comma-separated header as a set of lower-case names."""
    return {name.strip().lower() for name in response.headers[header].split(",")}


def dev_token(html: str) -> str:
    match = re.search(r'<meta name="axrisi-dev-token" content="([^"]*)">', html)
    assert match, "the page lost its dev-token meta tag"
    return match.group(1)


def test_development_page_carries_a_working_token() -> None:
    """In development mode GET / embeds a freshly minted token that the API accepts."""
    c = client(env="development")
    page = c.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    token = dev_token(page.get_data(as_text=True))
    assert token.count(".") == 2
    assert c.get("/api/commands", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_production_page_has_no_token_and_a_strict_csp() -> None:
    """Outside development the token meta is empty; the CSP forbids inline and foreign script."""
    page = client(env="production").get("/")
    assert dev_token(page.get_data(as_text=True)) == ""
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "default-src 'none'" in csp
    assert page.headers["Cache-Control"] == "no-store"


def test_development_with_an_outside_identity_provider_has_no_token() -> None:
    """With JWT_PUBLIC_KEY there is no key to sign a dev token with: the page still loads."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    page = client(env="development", jwt_secret_key=None, jwt_public_key=public,
                  jwt_algorithm="ES256").get("/")
    assert page.status_code == 200
    assert dev_token(page.get_data(as_text=True)) == ""


@pytest.mark.parametrize("path", ["/static/axrisi-client.js", "/static/demo.js",
                                  "/static/vendor/marked.esm.js",
                                  "/static/vendor/purify.es.mjs"])
def test_modules_are_served_as_javascript(path: str) -> None:
    """ES modules load only with a JavaScript MIME type."""
    response = client().get(path)
    assert response.status_code == 200
    assert response.mimetype in ("text/javascript", "application/javascript")


def test_no_cors_origins_means_no_cors_headers() -> None:
    """Without CORS_ORIGINS, neither preflights nor answers carry any Access-Control header."""
    c = client()
    for response in (c.options("/api/run", headers={"Origin": "https://a.test", **PREFLIGHT}),
                     c.post("/api/run", headers={"Origin": "https://a.test"})):
        assert not [h for h in response.headers.keys() if h.lower().startswith("access-control")]


def test_preflight_for_an_allowed_origin() -> None:
    """An allowed origin's preflight gets origin, headers, methods and max-age; never a 401."""
    origin = "chrome-extension://abcdefghijklmnopabcdefghijklmnop"
    c = client(cors_origins=("https://a.test", origin))
    response = c.options("/api/run", headers={"Origin": origin, **PREFLIGHT})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    allowed = names(response, "Access-Control-Allow-Headers")
    assert allowed == {"authorization", "content-type", "last-event-id"}
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods == {"GET", "POST", "DELETE", "OPTIONS"}  # DELETE: stopping a stream
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in response.headers.get("Vary", "")
    commands = c.options("/api/commands", headers={
        "Origin": "https://a.test", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert commands.status_code == 200
    assert commands.headers["Access-Control-Allow-Origin"] == "https://a.test"


def test_errors_carry_cors_headers_for_allowed_origins_only() -> None:
    """A 401 is readable by an allowed page (with exposed headers), not by another origin."""
    c = client(cors_origins=("https://a.test",))
    allowed = c.post("/api/run", headers={"Origin": "https://a.test"})
    assert allowed.status_code == 401
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://a.test"
    exposed = names(allowed, "Access-Control-Expose-Headers")
    assert {"x-request-id", "retry-after"} <= exposed
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    other = c.post("/api/run", headers={"Origin": "https://b.test"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = c.options("/api/run", headers={"Origin": "https://b.test", **PREFLIGHT})
    assert preflight.status_code != 401
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_origins_are_matched_literally_not_as_regular_expressions() -> None:
    """An origin holding regex characters allows itself only (flask-cors would read a regex)."""
    c = client(cors_origins=("https://*.example.com",))
    for stranger in ("https://evil.example.com", "https://xexample.com.evil.test",
                     "https://example.com"):
        response = c.options("/api/run", headers={"Origin": stranger, **PREFLIGHT})
        assert "Access-Control-Allow-Origin" not in response.headers, stranger
    prefix = client(cors_origins=("https://a.test",)).options(
        "/api/run", headers={"Origin": "https://a.test.evil.test", **PREFLIGHT})
    assert "Access-Control-Allow-Origin" not in prefix.headers


def test_api_paths_only() -> None:
    """CORS covers /api/*: the page and health checks get no Access-Control headers."""
    c = client(cors_origins=("https://a.test",))
    for path in ("/", "/healthz"):
        response = c.get(path, headers={"Origin": "https://a.test"})
        assert "Access-Control-Allow-Origin" not in response.headers, path


def test_a_scrape_does_not_walk_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A walk of every object holds the worker's loop (every stream) for as long as the heap
    is big: /metrics does none unless AXRISI_GREENLET_GAUGE asks for the greenlet count."""
    import gc

    walks: list[int] = []
    real = gc.get_objects

    def counted(*args: object) -> list[object]:
        walks.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(gc, "get_objects", counted)
    for gauge, expected in ((False, 0), (True, 1)):
        walks.clear()
        app = create_app(Settings(env="development", jwt_secret_key="x" * 40,
                                  greenlet_gauge=gauge))
        answer = app.test_client().get("/metrics")
        assert answer.status_code == 200
        assert len(walks) == expected
