"""The OpenAPI document at /openapi.json against the live service, with schemathesis.

schemathesis generates requests from the document (valid ones, and invalid ones that must be
refused) and checks every response: no 5xx, statuses, content types, headers and JSON bodies as
documented, bad requests refused, authentication not ignored. The service runs on its local
provider (fast, no network), with limits high enough not to interfere.

What schemathesis cannot reach is checked here by hand against the same document: the events of
a stream (reasoning, snapshot and done with reasoning tokens included: it does not read
event streams), the stream list with entries in it, and its 503 when Redis does not answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fake_upstream import FakeUpstream, Scenario
from tests.test_api_doc import OPENAPI, resolve
from tests.test_openapi_answers import declared, validate

from .client import SSEConnection, make_token
from .redis_server import RedisServer
from .servers import Gunicorn

ST = Path(sys.executable).with_name("st")
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def service() -> Iterator[Gunicorn]:
    env = {"AXRISI_LOCAL_PACE_SECONDS": "0", "AXRISI_RATE_LIMIT": "100000/minute",
           "AXRISI_MAX_STREAMS_PER_USER": "0", "AXRISI_MAX_TEXT_CHARS": "2000",
           # schemathesis sends many bad tokens on purpose (its ignored_auth check).
           "AXRISI_AUTH_FAILURE_LIMIT": "100000/minute"}
    with Gunicorn(env) as server:
        yield server


def test_the_document_is_served_and_follows_the_settings(service: Gunicorn) -> None:
    document = requests.get(service.url + "/openapi.json", timeout=5).json()
    assert document["openapi"].startswith("3.1")
    text = document["components"]["schemas"]["RunRequest"]["properties"]["text"]
    assert text["maxLength"] == 2000
    assert set(document["paths"]) >= {"/api/run", "/api/commands", "/api/streams/{streamId}",
                                      "/healthz", "/readyz", "/metrics", "/openapi.json"}


def finished_stream(service: Gunicorn, user: str) -> str:
    """A stream of ``user``'s that exists: schemathesis resumes it with all sorts of ids."""
    events = SSEConnection(service.url, {"command": "summarize", "text": "One. Two. Three."},
                           token=make_token(user)).read_all()
    assert events and events[0].id
    return events[0].id.rpartition("-")[0]


def test_schemathesis_finds_no_failure(service: Gunicorn, tmp_path: Path) -> None:
    """Every check, every operation: the examples, coverage and fuzzing phases."""
    stream_id = finished_stream(service, "schemathesis")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.read_text() + (
        '\n[[operations]]\ninclude-name = "GET /api/streams/{streamId}"\n'
        f'parameters = {{ streamId = "{stream_id}" }}\n'))
    command = [str(ST), "--config-file", str(config), "run", f"{service.url}/openapi.json",
               "--url", service.url,
               "--header", f"Authorization: Bearer {make_token('schemathesis')}",
               "--checks", "all", "--phases", "examples,coverage,fuzzing",
               "--max-examples", "40", "--workers", "1", "--request-timeout", "10",
               "--suppress-health-check", "all", "--seed", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = result.stdout[-20000:] + result.stderr[-5000:]
    assert result.returncode == 0, output


# ---- By hand: what schemathesis does not read ---------------------------------------------------

def check_json_answer(response: requests.Response, method: str, operation: str) -> Any:
    """The answer's status is declared for the operation, its headers and JSON body are as
    declared there; returns the body."""
    spec = declared(method, operation, response.status_code)
    for name, header in spec.get("headers", {}).items():
        header = resolve(header)
        value = response.headers.get(name)
        assert value is not None or not header.get("required"), f"{name} is missing"
        if value is not None:
            validate(header["schema"], value)
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    body = response.json()
    validate(spec["content"]["application/json"]["schema"], body)
    return body


def check_events(events: list[Any]) -> None:
    """Every event validates against the document's SSEEvent (its data against the event
    schemas, as the one of them it must match)."""
    schema = OPENAPI["components"]["schemas"]["SSEEvent"]
    data_schema = schema["properties"]["data"]["contentSchema"]
    for event in events:
        validate(schema, {"id": event.id, "event": event.event or "message", "data": event.data})
        validate(data_schema, json.loads(event.data))


def test_reasoning_and_snapshot_events_are_the_documented_ones(server: Gunicorn,
                                                               upstream: FakeUpstream) -> None:
    """A stream with "reasoning": true, and its resume with catchup=snapshot: every event has
    one of the document's shapes, the snapshot folds what it says, usage has reasoningTokens."""
    key = f"doc-think-{uuid.uuid4().hex[:10]}"
    thoughts, answer = ["Let me", " think."], ["An", " answer."]
    upstream.add_scenario(key, Scenario(tokens=answer, reasoning=thoughts, delay=0.01))
    token = make_token(f"doc-{key}")
    events = SSEConnection(server.url, {"command": "summarize", "text": f"Text {key}",
                                        "reasoning": True}, token=token).read_all()
    check_events(events)
    kinds = {next(iter(json.loads(e.data))) for e in events}
    assert {"title", "reasoning", "content", "done"} <= kinds
    assert json.loads(events[-1].data)["usage"]["reasoningTokens"] == len(thoughts)
    stream_id = events[0].id.rpartition("-")[0]
    replay = SSEConnection(server.url, None, token=token, method="GET",
                           path=f"/api/streams/{stream_id}?catchup=snapshot").read_all()
    check_events(replay)
    assert [e.id for e in replay] == [events[-2].id, events[-1].id]
    assert json.loads(replay[0].data)["snapshot"] == {
        "title": json.loads(events[0].data)["title"], "content": "".join(answer),
        "reasoning": "".join(thoughts)}


def test_the_stream_list_is_the_documented_one(service: Gunicorn) -> None:
    """GET /api/streams with a stream in it: the documented 200, the entry as it is."""
    user = f"lister-{uuid.uuid4().hex[:8]}"
    stream_id = finished_stream(service, user)
    response = requests.get(service.url + "/api/streams", timeout=5,
                            headers={"Authorization": f"Bearer {make_token(user)}"})
    body = check_json_answer(response, "GET", "/api/streams")
    [entry] = body["streams"]
    assert (entry["streamId"], entry["command"], entry["state"], entry["background"]) == (
        stream_id, "summarize", "done", False)
    assert entry["lastEventId"].rpartition("-")[0] == stream_id


def test_a_stream_list_redis_cannot_give_is_the_documented_503(redis_server: RedisServer) -> None:
    """With REDIS_URL and redis-server gone, the list is unknowable: 503 unavailable with
    Retry-After, as documented (never a partial 200)."""
    env = {"AXRISI_LOCAL_PACE_SECONDS": "0", **redis_server.env}
    headers = {"Authorization": f"Bearer {make_token('lister')}"}
    with Gunicorn(env) as shared:
        assert requests.get(shared.url + "/api/streams", headers=headers,
                            timeout=5).status_code == 200
        redis_server.kill()
        try:
            response = requests.get(shared.url + "/api/streams", headers=headers, timeout=10)
        finally:
            redis_server.start()
    body = check_json_answer(response, "GET", "/api/streams")
    assert response.status_code == 503 and body["code"] == "unavailable"
