"""The OpenAPI document at /openapi.json against the live service, with schemathesis.

schemathesis generates requests from the document (valid ones, and invalid ones that must be
refused) and checks every response: no 5xx, statuses, content types, headers and JSON bodies as
documented, bad requests refused, authentication not ignored. The service runs on its local
provider (fast, no network), with limits high enough not to interfere.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .client import SSEConnection, make_token
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
