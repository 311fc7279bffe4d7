"""A generation reading its answer on the socket's readiness (the pump), against the real fake
upstream on loopback, plain and TLS, through the real OpenAI provider and LeanTransport.

Once the answer's headers are in, no greenlet waits for the upstream: these tests check that it
is so, and that every way a stream ends still writes one terminal event, closes the upstream
(seen from the upstream's side) and calls the end hook once; and that back pressure, which only
a greenlet can wait out, hands the reading back to one with nothing lost. The generation runs
in a monkey-patched child (``tests/pump_driver.py``), as in a gevent worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certs import self_signed
from tests.fake_upstream import FakeUpstream, Scenario

ROOT = Path(__file__).resolve().parents[1]
TOKENS = [f"t{n} " for n in range(30)]


@pytest.fixture(params=["http", "https"])
def upstream(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeUpstream]:
    """The fake upstream over plain HTTP, and over TLS with a certificate the driver trusts
    through ``SSL_CERT_FILE`` (as a deployment would for a private CA)."""
    with FakeUpstream(tls=self_signed(tmp_path) if request.param == "https" else None) as server:
        yield server


def drive(upstream: FakeUpstream, case: str, scenario: Scenario) -> dict[str, Any]:
    key = f"pump-{case}"
    upstream.add_scenario(key, scenario)
    env = dict(os.environ)
    if upstream.cert_file is not None:
        env["SSL_CERT_FILE"] = str(upstream.cert_file)
    done = subprocess.run([sys.executable, "-m", "tests.pump_driver", case, upstream.base_url,
                           key], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    result["record"] = upstream.wait_for_request(key)
    return result


def test_the_answer_is_read_with_no_greenlet_waiting_for_it(upstream: FakeUpstream) -> None:
    seen = drive(upstream, "whole", Scenario(tokens=TOKENS, delay=0.01))
    assert seen["pumped"]  # running, its greenlet gone
    assert (seen["outcome"], seen["ends"], seen["text"]) == ("done", 1, "".join(TOKENS))
    assert seen["last"]["finishReason"] == "stop"
    assert seen["last"]["usage"]["completionTokens"] == 30
    assert seen["record"].wait_completed(2) and seen["pooled"] == 1  # read to its end: pooled


def test_an_interrupt_ends_it_and_closes_the_upstream(upstream: FakeUpstream) -> None:
    seen = drive(upstream, "cut", Scenario(tokens=TOKENS, hang_after=3))
    assert seen["pumped"]
    assert seen["record"].wait_closed(2)
    assert (seen["outcome"], seen["ends"], seen["last"]["code"]) == ("cancelled", 1, "cancelled")
    assert seen["pooled"] == 0


def test_silence_ends_a_pumped_stream(upstream: FakeUpstream) -> None:
    seen = drive(upstream, "silent", Scenario(tokens=TOKENS, hang_after=2))
    assert seen["pumped"]
    assert seen["record"].wait_closed(2)
    assert (seen["outcome"], seen["error_kind"]) == ("upstream_timeout", "timeout")
    assert seen["text"] == "".join(TOKENS[:2]) and seen["ends"] == 1


@pytest.mark.parametrize(("case", "scenario", "kind"), [
    ("reset", Scenario(tokens=TOKENS, delay=0.005, reset_after=5), "connection"),
    ("error", Scenario(tokens=TOKENS, delay=0.005, error_event_after=5), "in_stream_error"),
])
def test_a_failure_mid_answer_ends_it_after_what_came_before(
        upstream: FakeUpstream, case: str, scenario: Scenario, kind: str) -> None:
    seen = drive(upstream, case, scenario)
    assert seen["pumped"]
    assert (seen["outcome"], seen["error_kind"], seen["ends"]) == ("upstream_error", kind, 1)
    assert seen["text"] == "".join(TOKENS[:5]) and seen["last"]["code"] == "upstream_error"


def test_back_pressure_hands_the_reading_back_and_loses_nothing(upstream: FakeUpstream) -> None:
    """A follower that takes nothing holds the log at its cap (5 events): the append must wait,
    which a hub callback cannot; a greenlet takes over, waits, and reads the rest once the
    follower moves on."""
    seen = drive(upstream, "pressed", Scenario(tokens=TOKENS, delay=0.002))
    assert seen["held_at_cap"] == 5 and seen["handed_back"]
    assert seen["followed"] == "".join(TOKENS)
    assert (seen["outcome"], seen["ends"]) == ("done", 1) and seen["record"].wait_completed(2)
