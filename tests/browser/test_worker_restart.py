"""A stream that survives the extension's service worker being stopped, in real Chromium.

Chrome stops an MV3 service worker when it likes (idle, a crash, an update, DevTools), and the
worker's fetch dies with it. axrisi-client.js keeps each running stream's id, last event id and
text so far in ``chrome.storage.session``; the example extension calls ``resumePending`` when its
worker starts, and its side panel connects again when its port to the worker breaks, which is the
event that makes Chrome start the worker again.

The tests stop the worker with the DevTools protocol (``ServiceWorker.stopAllWorkers``) while the
upstream is held half-way by a gate, so the stop always lands mid-stream however slow the machine.
That the worker really stopped is shown from the outside: Chrome reports the worker's version
``stopped`` (``ServiceWorker.workerVersionUpdated``), the panel's port disconnects, and a global set
in the old instance is gone from the new one.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.servers import Gunicorn
from tests.fake_upstream import FakeUpstream, Scenario

from .conftest import WebOrigin, service_env, token
from .test_extension import service_worker

pytestmark = pytest.mark.e2e

WORKER_SCRIPT = "/service-worker.js"


@dataclass
class GatedScenario(Scenario):
    """A scenario that stops after ``gate_after`` tokens until the test opens ``gate``."""

    gate_after: int = 0
    gate: threading.Event = field(default_factory=threading.Event)


class GatedUpstream(FakeUpstream):
    """The fake upstream, holding a :class:`GatedScenario` at its gate (and noticing meanwhile
    when the service hangs up, as every other wait of the fake does)."""

    def _interrupt(self, conn: Any, record: Any, sent: int) -> bool:
        scenario = record.scenario
        if isinstance(scenario, GatedScenario) and scenario.gate_after == sent:
            while not scenario.gate.wait(0.05):
                conn.check_alive()
        return super()._interrupt(conn, record, sent)


@pytest.fixture(scope="module")
def gated_upstream() -> Iterator[GatedUpstream]:
    with GatedUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def grace_server(gated_upstream: GatedUpstream, allowed_origin: WebOrigin) -> Iterator[Gunicorn]:
    """The service keeping a stream generating for a minute with no client: the time a worker
    may be down. (With no grace, a worker's stop cancels its stream at once.)"""
    env = service_env(gated_upstream, allowed_origin, AXRISI_RESUME_GRACE_SECONDS="60",
                      AXRISI_UPSTREAM_TIMEOUT_SECONDS="60")
    with Gunicorn(env) as gunicorn:
        yield gunicorn


def wait_until(page: Any, condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Wait for a condition on what Playwright delivers (CDP events), pumping its loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        page.wait_for_timeout(20)


KEPT = """async () => {
    const all = await chrome.storage.session.get(null);
    return Object.entries(all).filter(([key]) => key.startsWith('axrisi-stream:'));
}"""
"""The client's entries in ``chrome.storage.session``, as ``[key, entry]`` pairs (any context)."""


def kept_entries(target: Any) -> list[list[Any]]:
    return list(target.evaluate(KEPT))


def wait_for_entry(target: Any, content: str, timeout: float = 20) -> list[list[Any]]:
    """The entries once there is exactly one and it holds ``content`` (or, past the timeout,
    whatever there is, for the assertion to show). Playwright's ``wait_for_function`` does not
    wait for a promise, hence the loop in the page."""
    return list(target.evaluate(f"""async ({{content, timeout}}) => {{
        const deadline = Date.now() + timeout;
        for (;;) {{
          const entries = await ({KEPT})();
          if (entries.length === 1 && entries[0][1].content === content) return entries;
          if (Date.now() > deadline) return entries;
          await new Promise((resolve) => setTimeout(resolve, 20));
        }}
    }}""", {"content": content, "timeout": timeout * 1000}))


def set_up(context: Any, server: Gunicorn) -> tuple[Any, str]:
    worker = service_worker(context)
    worker.evaluate("(settings) => chrome.storage.local.set(settings)",
                    {"serverUrl": server.url, "token": token("extension-user")})
    return worker, worker.url.split("/")[2]


def test_a_stopped_service_worker_takes_its_stream_up_again(
        extension_context: Any, grace_server: Gunicorn, gated_upstream: GatedUpstream) -> None:
    """Chrome stops the worker mid-stream; the panel's reconnect starts it again, it resumes from
    chrome.storage.session, and the panel ends with the exact text, each piece once."""
    key = f"restart-{uuid.uuid4().hex[:10]}"
    first = [f"before{i} " for i in range(15)]
    rest = [f"after{i} " for i in range(15)]
    expected = "".join(first + rest)
    scenario = gated_upstream.add_scenario(
        key, GatedScenario(tokens=first + rest, delay=0.01, gate_after=len(first)))
    assert isinstance(scenario, GatedScenario)
    worker, extension_id = set_up(extension_context, grace_server)

    panel = extension_context.new_page()
    panel.goto(f"chrome-extension://{extension_id}/sidepanel.html")
    panel.wait_for_selector("body[data-state]", state="attached")
    # Every text the panel shows, as it changes: none may repeat or skip a piece.
    panel.evaluate("""() => {
        const answer = document.getElementById('answer');
        window.shown = [];
        new MutationObserver(() => window.shown.push(answer.textContent))
          .observe(answer, {childList: true, characterData: true, subtree: true});
    }""")
    cdp = extension_context.new_cdp_session(panel)
    statuses: list[str] = []
    cdp.on("ServiceWorker.workerVersionUpdated", lambda event: statuses.extend(
        v["runningStatus"] for v in event["versions"] if v["scriptURL"].endswith(WORKER_SCRIPT)))
    cdp.send("ServiceWorker.enable")
    wait_until(panel, lambda: statuses[-1:] == ["running"], "Chrome to report the worker running")
    worker.evaluate("() => { globalThis.instanceMark = 'the instance before the stop'; }")

    worker.evaluate("(text) => { axrisi.summarize({text, title: 'A page'}); }", f"Long {key}")
    record = gated_upstream.wait_for_request(key, timeout=10)
    assert record.wait_tokens(len(first), timeout=10)
    panel.wait_for_function("(text) => document.getElementById('answer').textContent === text",
                            arg="".join(first))
    # The client keeps where the stream is: its id, the last event's id and the text so far.
    [[entry_key, entry]] = wait_for_entry(panel, "".join(first))
    stream_id = entry["streamId"]
    assert entry_key == f"axrisi-stream:{stream_id}"
    # The title is event 0; the content came in 1 to len(first) events (the service may send
    # tokens that arrive together as one event).
    last_stream, last_seq = entry["lastEventId"].rsplit("-", 1)
    assert last_stream == stream_id and 1 <= int(last_seq) <= len(first)
    assert (entry["title"], entry["command"], entry["baseUrl"]) == (
        "Summary of A page", "summarize", grace_server.url)
    assert "text" not in entry and "token" not in entry

    statuses.clear()
    cdp.send("ServiceWorker.stopAllWorkers")
    # Chrome stops it; the panel's port breaks and the panel connects again, which starts it.
    wait_until(panel, lambda: "stopped" in statuses, "Chrome to report the worker stopped")
    wait_until(panel, lambda: statuses[-1:] == ["running"] and "starting" in statuses[
        statuses.index("stopped"):], "Chrome to start the worker again")
    assert int(panel.get_attribute("body", "data-disconnects") or 0) >= 1
    # A new instance (the old one's global is gone) that took the stream up from storage, while
    # the upstream is still held: the stop came mid-stream.
    assert worker.evaluate("() => globalThis.instanceMark ?? null") is None
    state = worker.evaluate("() => axrisi.ready.then(() => axrisi.state())")
    assert (state["status"], state["resumed"]) == ("streaming", True)
    assert not record.completed.is_set()

    scenario.gate.set()
    panel.wait_for_selector("body[data-state='done']")
    assert panel.text_content("#answer") == expected
    shown = panel.evaluate("() => window.shown")
    assert shown[-1] == expected
    assert [text for text in shown if not expected.startswith(text)] == []
    assert worker.evaluate("() => axrisi.state().content") == expected
    # One generation upstream (the resume read the service's kept events, not a new run), and
    # nothing left to take up again.
    assert [r for r in gated_upstream.requests if r.scenario_key == key] == [record]
    assert record.wait_completed(10)
    assert kept_entries(worker) == []


def test_the_kept_entry_goes_when_the_stream_ends_however_it_ends(
        extension_context: Any, grace_server: Gunicorn, gated_upstream: GatedUpstream) -> None:
    """done, an error event, a stop: each removes the entry; persist: false writes none."""
    worker, _ = set_up(extension_context, grace_server)
    done_key, error_key, held_key = (f"{name}-{uuid.uuid4().hex[:10]}"
                                     for name in ("kept-done", "kept-error", "kept-held"))
    gated_upstream.add_scenario(done_key, Scenario(tokens=["a ", "b ", "c"], delay=0.01))
    gated_upstream.add_scenario(error_key, Scenario(tokens=["a ", "b "], error_event_after=2))
    held = gated_upstream.add_scenario(held_key, GatedScenario(tokens=["x ", "y "], gate_after=1))
    assert isinstance(held, GatedScenario)
    run = """async ({service, token, text, persist}) => {
        const controller = new AbortController();
        globalThis.stopHeld = () => controller.abort();
        globalThis.pieces = [];
        const options = {baseUrl: service, token, command: 'summarize', text,
          signal: controller.signal, onContent: (piece) => globalThis.pieces.push(piece)};
        if (persist !== null) options.persist = persist;
        return axrisi.client.streamCommand(options).then(
          (result) => ({ok: true, content: result.content}),
          (error) => ({ok: false, code: error instanceof axrisi.client.AxrisiError
                                           ? error.code : error.name}));
    }"""
    first_piece = """async () => {
        const deadline = Date.now() + 20000;
        while (globalThis.pieces.length === 0 && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        return globalThis.pieces.length;
    }"""
    settings = {"service": grace_server.url, "token": token("extension-user"), "persist": None}
    assert worker.evaluate(run, {**settings, "text": done_key}) == {"ok": True, "content": "a b c"}
    assert kept_entries(worker) == []
    assert worker.evaluate(run, {**settings, "text": error_key}) == {
        "ok": False, "code": "upstream_error"}
    assert kept_entries(worker) == []

    # Held at its gate: kept while it runs (on by default in a service worker), gone once stopped.
    worker.evaluate(f"(settings) => {{ globalThis.held = ({run})(settings); }}",
                    {**settings, "text": held_key})
    assert worker.evaluate(first_piece) == 1
    [[_, entry]] = wait_for_entry(worker, "x ")
    assert entry["command"] == "summarize" and entry["tag"] is None
    worker.evaluate("() => globalThis.stopHeld()")
    assert worker.evaluate("() => globalThis.held") == {"ok": False, "code": "AbortError"}
    assert kept_entries(worker) == []

    # persist: false keeps nothing, even while it runs: once the first piece arrived, a stream
    # with persist on has asked storage to keep it, and a later read would see it.
    again = f"{held_key}-off"
    held_off = gated_upstream.add_scenario(again, GatedScenario(tokens=["x ", "y "], gate_after=1))
    assert isinstance(held_off, GatedScenario)
    worker.evaluate(f"(settings) => {{ globalThis.held = ({run})(settings); }}",
                    {**settings, "text": again, "persist": False})
    assert worker.evaluate(first_piece) == 1
    assert kept_entries(worker) == []
    held_off.gate.set()
    assert worker.evaluate("() => globalThis.held") == {"ok": True, "content": "x y "}
    assert kept_entries(worker) == []


def test_resume_pending_takes_each_stream_up_once_and_forgets_what_the_service_lost(
        extension_context: Any, grace_server: Gunicorn) -> None:
    """An entry whose stream the service no longer has ends in onError (not_found) and is
    removed; two resumePending calls at once take it up once; null forgets an entry."""
    worker, _ = set_up(extension_context, grace_server)
    outcome = worker.evaluate("""async ({service, token}) => {
        const c = axrisi.client;
        const entry = (id) => ({streamId: id, lastEventId: `${id}-3`, baseUrl: service,
          command: 'summarize', title: 'T', content: 'abc', commandId: Number(id), tag: {job: id},
          startedAt: Number(id), updatedAt: Number(id)});
        await chrome.storage.session.set({
          [c.STREAM_KEY_PREFIX + '1700000000001']: entry('1700000000001'),
          [c.STREAM_KEY_PREFIX + '1700000000002']: entry('1700000000002'),
        });
        const pending = (await c.pendingStreams()).map((s) => [s.streamId, s.content, s.tag]);
        const errors = [];
        const chooser = (stream) => stream.streamId.endsWith('2') ? null : {
          token, onError: (e) => errors.push([e.code, e.partial.content])};
        const [one, two] = await Promise.all([c.resumePending(chooser), c.resumePending(chooser)]);
        const taken = [...one, ...two];
        const results = await Promise.allSettled(taken.map((t) => t.result));
        return {pending, taken: taken.map((t) => t.stream.streamId), errors,
                results: results.map((r) => [r.status, r.reason?.code]),
                left: (await c.pendingStreams()).length};
    }""", {"service": grace_server.url, "token": token("extension-user")})
    assert outcome == {
        "pending": [["1700000000001", "abc", {"job": "1700000000001"}],
                    ["1700000000002", "abc", {"job": "1700000000002"}]],
        "taken": ["1700000000001"],
        "errors": [["not_found", "abc"]],
        "results": [["rejected", "not_found"]],
        "left": 0,
    }
