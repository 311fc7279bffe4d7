"""The OpenAPI document against the routes' real answers.

Every answer that needs neither a model nor Redis is provoked through Flask's test client: its
status must be one the document declares for the operation, its body must validate against the
declared schema, and its headers must be the declared ones (X-Request-ID on every one).
tests/e2e/test_openapi.py does the rest (streams, 204s) against the real gunicorn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from axrisi import create_app
from axrisi.config import Settings
from axrisi.web.auth import mint_token
from axrisi.web.services import services
from tests.test_api_doc import OPENAPI, resolve

BAD_TOKEN = {"Authorization": "Bearer not.a.token"}
SUMMARY = {"command": "summarize", "text": "One. Two. Three."}
Provoke = Callable[[FlaskClient, dict[str, str]], TestResponse]


@dataclass(frozen=True)
class Case:
    """One answer to provoke: on which operation, with what status and error code."""

    name: str
    method: str
    operation: str
    """The OpenAPI path the request lands on."""
    status: int
    code: str | None
    provoke: Provoke
    settings: dict[str, Any] = field(default_factory=dict)


def make_client(**settings: Any) -> FlaskClient:
    values: dict[str, Any] = {"env": "development", "jwt_secret_key": "x" * 40, **settings}
    return create_app(Settings(**values)).test_client()


def good_token(client: FlaskClient) -> dict[str, str]:
    with client.application.app_context():
        return {"Authorization": f"Bearer {mint_token('alice')}"}


def validate(schema: dict[str, Any], instance: object) -> None:
    """Validate against a schema of the document (its ``$ref``s resolved in the document)."""
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": OPENAPI["components"], "allOf": [schema]}
    jsonschema_rs.validator_for(root).validate(instance)


def declared(method: str, operation: str, status: int) -> dict[str, Any]:
    """The document's response for that status; fails when it declares none."""
    responses = OPENAPI["paths"][operation][method.lower()]["responses"]
    assert str(status) in responses, \
        f"{method} {operation} answered {status}; the document declares {sorted(responses)}"
    return resolve(responses[str(status)])


def check_headers(response: TestResponse, spec: dict[str, Any]) -> None:
    """Required headers present, present ones valid; X-Request-ID always."""
    assert response.headers.get("X-Request-ID"), "no X-Request-ID"
    headers = {name: resolve(header) for name, header in spec.get("headers", {}).items()}
    assert "X-Request-ID" in headers, "the document does not declare X-Request-ID here"
    for name, header in headers.items():
        value = response.headers.get(name)
        if value is None:
            assert not header.get("required"), f"required header {name} is missing"
            continue
        validate(header["schema"], value)


def check_body(response: TestResponse, spec: dict[str, Any]) -> Any:
    """The body's media type is declared and it validates; returns it parsed (JSON) or as text."""
    content = spec.get("content")
    if not content:
        assert response.get_data() == b""
        return None
    assert response.mimetype in content, f"{response.mimetype} is not in {sorted(content)}"
    body = response.get_json() if response.mimetype == "application/json" \
        else response.get_data(as_text=True)
    validate(content[response.mimetype]["schema"], body)
    return body


def check(response: TestResponse, spec: dict[str, Any], code: str | None) -> None:
    check_headers(response, spec)
    body = check_body(response, spec)
    if code is not None:
        assert body["code"] == code


# --- provoking ----------------------------------------------------------------------------------

def request(method: str, path: str, token: bool = True, headers: dict[str, str] | None = None,
            **kwargs: Any) -> Provoke:
    """A request, with a good token unless ``token`` is False."""
    def provoke(client: FlaskClient, auth: dict[str, str]) -> TestResponse:
        sent = {**(auth if token else {}), **(headers or {})}
        return client.open(path, method=method, headers=sent, **kwargs)
    return provoke


def after_failed_logins(method: str, path: str) -> Provoke:
    """The request with a good token, after more failed logins than AXRISI_AUTH_FAILURE_LIMIT."""
    def provoke(client: FlaskClient, auth: dict[str, str]) -> TestResponse:
        answers = [client.open(path, method=method, headers=BAD_TOKEN).status_code
                   for _ in range(3)]
        assert answers == [401, 401, 429]
        return client.open(path, method=method, headers=auth)
    return provoke


def twice(provoke: Provoke) -> Provoke:
    """The second of two identical requests (the first spends a limit)."""
    def second(client: FlaskClient, auth: dict[str, str]) -> TestResponse:
        provoke(client, auth)
        return provoke(client, auth)
    return second


def draining(provoke: Provoke) -> Provoke:
    """The request to a worker that is draining for shutdown."""
    def drained(client: FlaskClient, auth: dict[str, str]) -> TestResponse:
        services(client.application).lifecycle.draining = True
        return provoke(client, auth)
    return drained


AUTHENTICATED = [("GET", "/api/commands", "/api/commands"), ("GET", "/api/usage", "/api/usage"),
                 ("POST", "/api/run", "/api/run"), ("GET", "/api/streams", "/api/streams"),
                 ("GET", "/api/streams/1", "/api/streams/{streamId}"),
                 ("DELETE", "/api/streams/1", "/api/streams/{streamId}")]


def auth_cases() -> list[Case]:
    """401 without a token or with a bad one, and the per-address 429, on every guarded route."""
    cases = []
    for method, path, operation in AUTHENTICATED:
        cases += [
            Case(f"{method} {path} no token", method, operation, 401, "unauthorized",
                 request(method, path, token=False)),
            Case(f"{method} {path} bad token", method, operation, 401, "unauthorized",
                 request(method, path, token=False, headers=BAD_TOKEN)),
            Case(f"{method} {path} failed logins", method, operation, 429, "rate_limited",
                 after_failed_logins(method, path), {"auth_failure_limit": "2/minute"}),
        ]
    return cases


def run(body: bytes | str, content_type: str = "application/json") -> Provoke:
    return request("POST", "/api/run", data=body, content_type=content_type)


def run_cases() -> list[Case]:
    """POST /api/run's refusals before a stream starts."""
    def case(name: str, status: int, code: str, provoke: Provoke, **settings: Any) -> Case:
        return Case(f"POST /api/run {name}", "POST", "/api/run", status, code, provoke, settings)

    return [
        case("not JSON media type", 415, "unsupported_media_type", run("{}", "text/plain")),
        case("not JSON", 400, "invalid_json", run("{")),
        case("not an object", 400, "invalid_json", run("[1]")),
        case("no command", 400, "invalid_request", run('{"text": "x"}')),
        case("null title", 400, "invalid_request",
             run(json.dumps({**SUMMARY, "title": None}))),
        case("unknown command", 400, "unknown_command", run('{"command": "x", "text": "y"}')),
        case("text too long", 413, "too_large", run(json.dumps({**SUMMARY, "text": "a" * 101})),
             max_text_chars=100),
        case("body too large", 413, "too_large", run(b"{" + b" " * 70_000 + b"}"),
             max_text_chars=100),
        case("rate spent", 429, "rate_limited", twice(run("{}", "text/plain")),
             rate_limit="1/minute"),
        case("draining", 503, "unavailable", draining(run(json.dumps(SUMMARY)))),
    ]


def stream_cases() -> list[Case]:
    """Resuming and stopping streams that do not exist, or with ids of another stream."""
    resume, stop = ("GET", "/api/streams/{streamId}"), ("DELETE", "/api/streams/{streamId}")
    return [
        Case("resume unknown", *resume, 404, "not_found", request("GET", "/api/streams/1")),
        Case("resume not a number", *resume, 404, "not_found",
             request("GET", "/api/streams/abc")),
        Case("resume another stream's id", *resume, 400, "invalid_request",
             request("GET", "/api/streams/1", headers={"Last-Event-ID": "2-0"})),
        Case("resume lastEventId twice", *resume, 400, "invalid_request",
             request("GET", "/api/streams/1?lastEventId=1-0&lastEventId=1-1")),
        Case("resume catchup not snapshot", *resume, 400, "invalid_request",
             request("GET", "/api/streams/1?catchup=events")),
        Case("resume catchup twice", *resume, 400, "invalid_request",
             request("GET", "/api/streams/1?catchup=snapshot&catchup=snapshot")),
        Case("resume unknown with catchup", *resume, 404, "not_found",
             request("GET", "/api/streams/1?catchup=snapshot")),
        Case("stop unknown", *stop, 404, "not_found", request("DELETE", "/api/streams/1")),
    ]


def plain_cases() -> list[Case]:
    """The catalog, the usage, the operator endpoints and the document."""
    def get(path: str, status: int = 200, code: str | None = None, token: bool = False,
            **settings: Any) -> Case:
        return Case(f"GET {path} {status}", "GET", path, status, code,
                    request("GET", path, token=token), settings)

    return [
        get("/api/commands", token=True), get("/api/usage", token=True),
        get("/api/streams", token=True), get("/healthz"),
        get("/readyz"), get("/openapi.json"), get("/metrics"),
        get("/metrics", 401, "unauthorized", metrics_token="m" * 32),
        Case("GET /readyz draining", "GET", "/readyz", 503, None,
             draining(request("GET", "/readyz", token=False))),
    ]


CASES = auth_cases() + run_cases() + stream_cases() + plain_cases()
ELSEWHERE = {
    ("POST", "/api/run"): {"200"},
    ("GET", "/api/streams"): {"503"},
    ("GET", "/api/streams/{streamId}"): {"200", "204", "503"},
    ("DELETE", "/api/streams/{streamId}"): {"204", "503"},
}
"""Answers that need a stream or Redis: the e2e tests provoke them (test_openapi, test_resume,
test_stop, test_redis_faults; the stream list's 503 and its entries: test_openapi)."""


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_answer_is_the_documented_one(case: Case) -> None:
    client = make_client(**case.settings)
    response = case.provoke(client, good_token(client))
    assert response.status_code == case.status, response.get_data(as_text=True)
    check(response, declared(case.method, case.operation, case.status), case.code)


def test_every_operation_is_provoked() -> None:
    """A new route or method in the document gets a case here too."""
    provoked = {(case.method, case.operation) for case in CASES}
    described = {(method.upper(), path) for path, item in OPENAPI["paths"].items()
                 for method in item}
    assert provoked == described


def test_every_declared_answer_is_provoked_here_or_in_the_e2e_tests() -> None:
    """No status is declared that nothing provokes (500: ``test_a_bug_is_the_documented_500``)."""
    provoked: dict[tuple[str, str], set[str]] = {}
    for case in CASES:
        provoked.setdefault((case.method, case.operation), set()).add(str(case.status))
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            key = (method.upper(), path)
            left = set(operation["responses"]) - provoked[key] - ELSEWHERE.get(key, set())
            assert left == {"500"}, f"{method.upper()} {path}: nothing provokes {left - {'500'}}"


def test_a_bug_is_the_documented_500(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unexpected exception is 500 internal, with no trace in the body."""
    def broken() -> None:
        raise RuntimeError("a secret detail")

    monkeypatch.setattr("axrisi.web.api.public_catalog", broken)
    client = make_client()
    response = client.get("/api/commands", headers=good_token(client))
    assert response.status_code == 500 and b"secret" not in response.get_data()
    check(response, declared("GET", "/api/commands", 500), "internal")


@pytest.mark.parametrize("path", sorted(OPENAPI["paths"]))
def test_a_method_a_path_does_not_take_is_the_documented_405(path: str) -> None:
    """405 method_not_allowed, whose Allow lists exactly the document's methods for the path."""
    concrete = path.replace("{streamId}", "1")
    methods = {method.upper() for method in OPENAPI["paths"][path]}
    wrong = next(m for m in ("PUT", "PATCH", "POST", "DELETE") if m not in methods)
    response = make_client().open(concrete, method=wrong)
    assert response.status_code == 405
    check(response, resolve({"$ref": "#/components/responses/MethodNotAllowed"}),
          "method_not_allowed")
    allowed = {m.strip() for m in response.headers["Allow"].split(",")} - {"HEAD", "OPTIONS"}
    assert allowed == methods


def test_an_unknown_path_is_the_documented_404() -> None:
    response = make_client().get("/api/nothing-here")
    assert response.status_code == 404
    check(response, resolve({"$ref": "#/components/responses/NotFound"}), "not_found")


@pytest.mark.parametrize(("given", "echoed"), [("abc-123.x:y@z/+=", True), ("", False),
                                                ("a b", False), ("x" * 129, False)])
def test_x_request_id_is_the_clients_when_sane(given: str, echoed: bool) -> None:
    """A sane id is echoed; any other is replaced by a new one of 32 hex digits."""
    response = make_client().get("/healthz", headers={"X-Request-ID": given})
    answered = response.headers["X-Request-ID"]
    assert answered == given if echoed else re.fullmatch(r"[0-9a-f]{32}", answered)
    validate(resolve(OPENAPI["components"]["headers"]["RequestId"])["schema"], answered)
