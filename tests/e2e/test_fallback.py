"""A second upstream when the first fails before its first content, proved by both fake
upstreams' request logs (exactly one request each) and by exact content."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, content_of
from .servers import Gunicorn, free_port
from .test_stream import run_body, unique_key

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def fallback() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


def env(primary_url: str, fallback: FakeUpstream) -> dict[str, str]:
    return {"OPENAI_BASE_URL": primary_url, "OPENAI_API_KEY": "primary-key",
            "OPENAI_FALLBACK_BASE_URL": fallback.base_url, "OPENAI_FALLBACK_API_KEY": "fb-key",
            "AXRISI_FALLBACK_MODEL": "fallback-model", "AXRISI_MODEL": "primary-model",
            "AXRISI_UPSTREAM_TIMEOUT_SECONDS": str(TIMEOUT),
            "AXRISI_MAX_STREAMS_PER_USER": "0", "AXRISI_RATE_LIMIT": "100000/minute"}


@pytest.fixture(scope="module")
def service(upstream: FakeUpstream, fallback: FakeUpstream) -> Iterator[Gunicorn]:
    with Gunicorn(env(upstream.base_url, fallback)) as server:
        yield server


def requests_for(fake: FakeUpstream, key: str) -> int:
    return sum(1 for record in list(fake.requests) if record.scenario_key == key)


@pytest.mark.parametrize("failure", [
    Scenario(status=503), Scenario(status=429, response_headers={"retry-after": "0"}),
    Scenario(header_delay=TIMEOUT * 2), Scenario(tokens=["late"], first_token_delay=TIMEOUT * 2),
], ids=["503", "429", "no headers", "no content"])
def test_the_fallback_answers_when_the_primary_fails_before_content(
        service: Gunicorn, upstream: FakeUpstream, fallback: FakeUpstream,
        failure: Scenario) -> None:
    key = unique_key("fb")
    tokens = ["Second ", "opinion ", "exact."]
    upstream.add_scenario(key, failure)
    fallback.add_scenario(key, Scenario(tokens=tokens))
    events = SSEConnection(service.url, run_body(key), timeout=15).read_all()
    assert content_of(events) == "".join(tokens)
    assert events[-1].json["done"] is True and events[-1].json["model"] == "fallback-model"
    assert requests_for(upstream, key) == 1 and requests_for(fallback, key) == 1
    assert '"fallback":' in service.log()


def test_no_fallback_after_the_first_content(service: Gunicorn, upstream: FakeUpstream,
                                             fallback: FakeUpstream) -> None:
    key = unique_key("fb-late")
    upstream.add_scenario(key, Scenario(tokens=["half ", "an ", "answer"], reset_after=2))
    fallback.add_scenario(key, Scenario(tokens=["never"]))
    events = SSEConnection(service.url, run_body(key)).read_all()
    assert content_of(events) == "half an "
    assert events[-1].event == "error" and events[-1].json["code"] == "upstream_error"
    assert requests_for(fallback, key) == 0


def test_a_healthy_primary_answers_alone(service: Gunicorn, upstream: FakeUpstream,
                                         fallback: FakeUpstream) -> None:
    key = unique_key("fb-ok")
    upstream.add_scenario(key, Scenario(tokens=["fine"]))
    events = SSEConnection(service.url, run_body(key)).read_all()
    assert events[-1].json["model"] == "primary-model" and content_of(events) == "fine"
    assert requests_for(fallback, key) == 0


def test_an_unreachable_primary(fallback: FakeUpstream) -> None:
    key = unique_key("fb-down")
    fallback.add_scenario(key, Scenario(tokens=["from ", "the ", "fallback"]))
    with Gunicorn(env(f"http://127.0.0.1:{free_port()}/v1", fallback)) as server:
        events = SSEConnection(server.url, run_body(key)).read_all()
    assert content_of(events) == "from the fallback"
    assert requests_for(fallback, key) == 1
