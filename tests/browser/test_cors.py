"""CORS in a real browser: a page on an allowed origin can stream /api/run, another cannot."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from tests.e2e.servers import Gunicorn
from tests.fake_upstream import FakeUpstream, Scenario

from .conftest import WebOrigin, token

pytestmark = pytest.mark.e2e

RUN_FROM_ORIGIN = """async ({origin, service, token, text}) => {
    const client = await import(origin + '/axrisi-client.js');
    const attempt = async (options) => {
      try {
        const result = await client.streamCommand({baseUrl: service, command: 'summarize',
                                                   text, ...options});
        return {ok: true, content: result.content, title: result.title};
      } catch (e) {
        return {ok: false, code: e.code, status: e.status, error: e.error};
      }
    };
    return {good: await attempt({token}), badToken: await attempt({token: 'nope'})};
}"""


def test_allowed_origin_streams_with_authorization(page: Any, server: Gunicorn,
                                                   upstream: FakeUpstream,
                                                   allowed_origin: WebOrigin) -> None:
    """A page on a CORS_ORIGINS origin fetch-streams /api/run and reads error bodies too."""
    key = f"cors-ok-{uuid.uuid4().hex[:10]}"
    upstream.add_scenario(key, Scenario(tokens=["cross", "-origin", " ✓"], delay=0.01))
    page.goto(allowed_origin.url + "/")
    outcome = page.evaluate(RUN_FROM_ORIGIN, {
        "origin": allowed_origin.url, "service": server.url, "token": token(),
        "text": f"From elsewhere {key}"})
    assert outcome["good"] == {"ok": True, "content": "cross-origin ✓", "title": "Summary"}
    assert outcome["badToken"] == {"ok": False, "code": "unauthorized", "status": 401,
                                   "error": "Unauthorized"}


def test_other_origin_is_refused(page: Any, server: Gunicorn, upstream: FakeUpstream,
                                 other_origin: WebOrigin) -> None:
    """A page on an origin not in CORS_ORIGINS gets a network error; no stream starts."""
    key = f"cors-refused-{uuid.uuid4().hex[:10]}"
    upstream.add_scenario(key, Scenario(tokens=["never"]))
    page.goto(other_origin.url + "/")
    outcome = page.evaluate(RUN_FROM_ORIGIN, {
        "origin": other_origin.url, "service": server.url, "token": token(),
        "text": f"From a stranger {key}"})
    assert outcome["good"]["ok"] is False and outcome["good"]["code"] == "network_error"
    assert outcome["good"]["status"] == 0
    assert outcome["badToken"]["code"] == "network_error"
    with pytest.raises(TimeoutError):
        upstream.wait_for_request(key, timeout=0.3)


def test_preflight_answers(server: Gunicorn, allowed_origin: WebOrigin,
                           other_origin: WebOrigin) -> None:
    """Preflight: allowed origin gets the allow headers, never a 401; another gets no ACAO."""
    ask = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type,last-event-id"}
    allowed = requests.options(server.url + "/api/run", timeout=5,
                               headers={"Origin": allowed_origin.url, **ask})
    assert allowed.status_code in (200, 204)
    assert allowed.headers["Access-Control-Allow-Origin"] == allowed_origin.url
    granted = {h.strip().lower()
               for h in allowed.headers["Access-Control-Allow-Headers"].split(",")}
    assert granted == {"authorization", "content-type", "last-event-id"}
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    assert allowed.headers["Access-Control-Max-Age"] == "600"
    refused = requests.options(server.url + "/api/run", timeout=5,
                               headers={"Origin": other_origin.url, **ask})
    assert refused.status_code != 401
    assert "Access-Control-Allow-Origin" not in refused.headers
