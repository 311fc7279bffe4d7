"""Finding an answer again and reading it whole, in real Chromium: ``listStreams``, catch-up
snapshots (``?catchup=snapshot``) and ``resumeStream``, through the client, the demo page and the
example extension.

The upstream is held half-way by a gate (``GatedScenario``) until the test opens it, so "the
stream is still running", "the reader left mid-answer" and "the rest comes live after the
snapshot" hold however slow the machine: nothing here waits on a clock. Streams are started with
``background: true``, so that the service generates them to their end with nobody reading.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.client import SSEConnection
from tests.e2e.servers import Gunicorn

from .conftest import WebOrigin, service_env, token
from .test_demo_page import open_demo, wait_state
from .test_extension import service_worker
from .test_resume import CuttingProxy
from .test_worker_restart import GatedScenario, GatedUpstream

pytestmark = pytest.mark.e2e

THOUGHTS = ["Let me ", "think: ", "the text ", "is about ", "rivers."]


@pytest.fixture(scope="module")
def held_upstream() -> Iterator[GatedUpstream]:
    with GatedUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def held_server(held_upstream: GatedUpstream, allowed_origin: WebOrigin) -> Iterator[Gunicorn]:
    """The service, with an upstream silence allowed for as long as a test holds the gate."""
    env = service_env(held_upstream, allowed_origin, AXRISI_UPSTREAM_TIMEOUT_SECONDS="60")
    with Gunicorn(env) as gunicorn:
        yield gunicorn


def held(upstream: GatedUpstream, prefix: str) -> tuple[str, GatedScenario, list[str], list[str]]:
    """A scenario that thinks, sends ``first``, then waits at its gate before ``rest``."""
    key = f"{prefix}-{uuid.uuid4().hex[:10]}"
    first = [f"first{i} " for i in range(6)]
    rest = [f"rest{i} " for i in range(6)]
    scenario = upstream.add_scenario(key, GatedScenario(
        tokens=first + rest, reasoning=THOUGHTS, delay=0.005, gate_after=len(first)))
    assert isinstance(scenario, GatedScenario)
    return key, scenario, first, rest


def listed(server: Gunicorn, user_token: str, stream_id: str) -> dict[str, Any] | None:
    """The stream's entry in ``GET /api/streams``, asked of the service directly."""
    response = requests.get(server.url + "/api/streams", timeout=5,
                            headers={"Authorization": f"Bearer {user_token}"})
    assert response.status_code == 200, response.text
    return next((s for s in response.json()["streams"] if s["streamId"] == stream_id), None)


def wait_listed_as(server: Gunicorn, user_token: str, stream_id: str, state: str,
                   timeout: float = 20) -> dict[str, Any] | None:
    """The entry once the list says ``state`` (or, past the timeout, as it is then)."""
    deadline = time.monotonic() + timeout
    while True:
        entry = listed(server, user_token, stream_id)
        if (entry and entry["state"] == state) or time.monotonic() > deadline:
            return entry
        time.sleep(0.05)


class FreezingProxy(CuttingProxy):
    """A TCP proxy to the service whose open connections the test can freeze (what the service
    sends them is read and thrown away: a link that went dead without anyone noticing) and then
    cut. Connections opened after the cut pass normally."""

    def __init__(self, target_port: int) -> None:
        self.frozen: set[socket.socket] = set()
        super().__init__(target_port)

    def passes(self, src: socket.socket) -> bool:
        with self.lock:
            return src not in self.frozen

    def freeze(self) -> int:
        """From now on nothing the service sends on the open connections reaches the browser;
        returns how many are frozen."""
        with self.lock:
            self.frozen = {server for _client, server in self.pairs}
            return len(self.frozen)

    def cut(self) -> int:
        cut = super().cut()  # first: a frozen connection never passes a byte again
        with self.lock:
            self.frozen = set()
        return cut


# ---- The client ---------------------------------------------------------------------------------

def test_a_dropped_connection_catches_up_in_one_snapshot(
        page: Any, held_server: Gunicorn, held_upstream: GatedUpstream) -> None:
    """The link goes dead mid-answer while the service writes the rest; when it is cut, the
    client resumes with ?catchup=snapshot and gets everything it missed as one event: the
    answer and the reasoning exact, each piece once."""
    key, scenario, first, rest = held(held_upstream, "freeze")
    user_token = token(f"freeze-{uuid.uuid4().hex[:8]}")
    proxy = FreezingProxy(held_server.port)
    try:
        page.goto(proxy.url + "/")
        page.evaluate(
            """async ({token, text}) => {
                const client = await import('/static/axrisi-client.js');
                const seen = window.seen = {pieces: [], thoughts: [], kinds: [], ids: [],
                                            reconnects: []};
                window.outcome = client.streamCommand({
                  token, command: 'summarize', text, background: true, reasoning: true,
                  onReasoning: (piece) => seen.thoughts.push(piece),
                  onContent: (piece) => seen.pieces.push(piece),
                  onEvent: (e) => { seen.ids.push(e.id); seen.kinds.push(Object.keys(
                    JSON.parse(e.data))[0]); },
                  onReconnect: (info) => seen.reconnects.push(info.lastEventId),
                }).then((r) => ({ok: true, content: r.content, reasoning: r.reasoning}),
                        (e) => ({ok: false, code: e.code, error: e.error}));
            }""",
            {"token": user_token, "text": f"Freeze me {key}"})
        record = held_upstream.wait_for_request(key)
        page.wait_for_function("(text) => window.seen.pieces.join('') === text",
                               arg="".join(first))
        assert proxy.freeze() >= 1
        scenario.gate.set()
        stream_id = page.evaluate("() => window.seen.ids[0]").rpartition("-")[0]
        # The service writes the rest into the dead link and ends the stream; the page sees
        # none of it.
        entry = wait_listed_as(held_server, user_token, stream_id, "done")
        assert entry is not None and entry["state"] == "done", entry
        assert page.evaluate("() => window.seen.pieces.join('')") == "".join(first)
        last_seen = page.evaluate("() => window.seen.ids.at(-1)")
        assert proxy.cut() >= 1
        outcome = page.evaluate("() => window.outcome")
        expected = "".join(first + rest)
        assert outcome == {"ok": True, "content": expected, "reasoning": "".join(THOUGHTS)}
        seen = page.evaluate("() => window.seen")
        assert "".join(seen["pieces"]) == expected
        assert "".join(seen["thoughts"]) == "".join(THOUGHTS)
        assert seen["reconnects"] == [last_seen]
        # What was missed came as one snapshot: the rest of the answer in one piece.
        assert seen["kinds"][-2:] == ["snapshot", "done"] and seen["kinds"].count("snapshot") == 1
        assert seen["pieces"][-1] == "".join(rest)
        assert [r for r in held_upstream.requests if r.scenario_key == key] == [record]
    finally:
        scenario.gate.set()
        proxy.close()


def test_a_listed_stream_reopens_whole_once_and_goes_on_live(
        page: Any, held_server: Gunicorn, held_upstream: GatedUpstream) -> None:
    """The reader leaves mid-answer (a background stream goes on); listStreams finds it running;
    resumeStream gives the title, the reasoning and the answer so far in one snapshot, then the
    rest live: the callbacks see the exact text once."""
    key, scenario, first, rest = held(held_upstream, "reopen")
    user_token = token(f"reopen-{uuid.uuid4().hex[:8]}")
    try:
        page.goto(held_server.url + "/")
        page.evaluate(
            """async ({token, text}) => {
                window.client = await import('/static/axrisi-client.js');
                window.leave = new AbortController();
                window.first = {pieces: []};
                window.left = client.streamCommand({
                  token, command: 'summarize', text, title: text, background: true,
                  reasoning: true, stopOnAbort: false, signal: leave.signal,
                  onContent: (piece) => first.pieces.push(piece),
                  onTitle: (title, payload) => { first.id = String(payload.commandId); },
                }).then(() => 'finished', (e) => e.name);
            }""",
            {"token": user_token, "text": f"Reopen me {key}"})
        record = held_upstream.wait_for_request(key)
        page.wait_for_function("(text) => window.first.pieces.join('') === text",
                               arg="".join(first))
        assert page.evaluate("() => { leave.abort(); return left; }") == "AbortError"
        stream_id = page.evaluate("() => window.first.id")

        streams = page.evaluate("(token) => client.listStreams({token})", user_token)
        assert [s["streamId"] for s in streams] == [stream_id]
        entry = streams[0]
        assert (entry["state"], entry["background"], entry["command"]) == (
            "running", True, "summarize")
        assert entry["title"] == f"Summary of Reopen me {key}"
        assert not record.client_closed.is_set(), "the background stream was stopped"

        page.evaluate(
            """({token, streamId}) => {
                const seen = window.seen = {titles: [], thoughts: [], pieces: [], soFar: [],
                                            kinds: []};
                window.reopened = client.resumeStream({
                  token, streamId,
                  onTitle: (title) => seen.titles.push(title),
                  onReasoning: (piece) => seen.thoughts.push(piece),
                  onContent: (piece, soFar) => { seen.pieces.push(piece); seen.soFar.push(soFar); },
                  onEvent: (e) => seen.kinds.push(Object.keys(JSON.parse(e.data))[0]),
                }).then((r) => ({ok: true, title: r.title, content: r.content,
                                 reasoning: r.reasoning}),
                        (e) => ({ok: false, code: e.code, error: e.error}));
            }""",
            {"token": user_token, "streamId": stream_id})
        page.wait_for_function("() => window.seen.kinds.length > 0")
        scenario.gate.set()
        outcome = page.evaluate("() => window.reopened")
        expected = "".join(first + rest)
        assert outcome == {"ok": True, "title": entry["title"], "content": expected,
                           "reasoning": "".join(THOUGHTS)}
        seen = page.evaluate("() => window.seen")
        assert seen["kinds"][0] == "snapshot" and seen["kinds"].count("snapshot") == 1
        assert seen["kinds"][-1] == "done" and "content" in seen["kinds"]
        assert seen["titles"] == [entry["title"]]
        assert "".join(seen["thoughts"]) == "".join(THOUGHTS)
        assert seen["pieces"][0] == "".join(first)  # what had been written, in one piece
        assert "".join(seen["pieces"]) == expected and seen["soFar"][-1] == expected
        done = listed(held_server, user_token, stream_id)
        assert done is not None and done["state"] == "done"
        assert [r for r in held_upstream.requests if r.scenario_key == key] == [record]
    finally:
        scenario.gate.set()


# ---- The demo page ------------------------------------------------------------------------------

def test_demo_reopens_a_background_stream_after_a_reload(
        page: Any, held_server: Gunicorn, held_upstream: GatedUpstream) -> None:
    """Started with "Keep generating in the background" and "Show reasoning", the page is
    reloaded mid-answer; "Your streams" lists the answer as running, Reopen shows what was
    written and the folded reasoning at once, then the rest as it comes."""
    key, scenario, first, rest = held(held_upstream, "demo-reload")
    try:
        open_demo(page, held_server)
        page.check("#show-reasoning")
        page.check("#background")
        page.fill("#title", key)
        page.fill("#text", f"A text to keep {key}")
        page.click("#start")
        record = held_upstream.wait_for_request(key)
        assert record.wait_tokens(len(first), timeout=10)
        page.wait_for_function(
            "(text) => document.getElementById('answer').textContent.trim() === text",
            arg="".join(first).strip())

        page.reload()
        open_demo(page, held_server)
        item = page.locator("#streams li", has_text=f"Summary of {key}")
        item.wait_for()
        assert item.get_attribute("data-state") == "running"
        assert "background" in (item.locator(".stream-meta").text_content() or "")
        assert not record.client_closed.is_set(), "the background stream was stopped"
        reopen = item.get_by_role("button", name=f"Reopen “Summary of {key}” (running)")
        reopen.click()
        page.wait_for_function(
            "(text) => document.getElementById('answer').textContent.trim() === text",
            arg="".join(first).strip())
        assert page.text_content("#events") == "1"  # the snapshot: one piece
        assert page.text_content("#answer-title") == f"Summary of {key}"
        assert page.is_visible("#reasoning summary")
        assert page.text_content("#reasoning-text") == "".join(THOUGHTS)
        assert reopen.is_disabled(), "one answer at a time"
        scenario.gate.set()
        wait_state(page, "done")
        assert (page.text_content("#answer") or "").strip() == "".join(first + rest).strip()
        assert page.evaluate("axrisiDemo.run").get("content") == "".join(first + rest)
        assert page.get_attribute("#reasoning", "open") is None
        page.locator("#streams li[data-state='done']", has_text=f"Summary of {key}").wait_for()
        assert [r for r in held_upstream.requests if r.scenario_key == key] == [record]
        assert page.axrisi_seen.errors == []
    finally:
        scenario.gate.set()


# ---- The extension's side panel -----------------------------------------------------------------

def test_side_panel_lists_and_reopens_an_answer_started_elsewhere(
        extension_context: Any, held_server: Gunicorn, held_upstream: GatedUpstream) -> None:
    """A background answer started by another client of the same user is listed in the side
    panel as running; Reopen shows it from its start (the reasoning folded above the answer)
    and follows it to its end: the panel's text only ever grows, to the exact answer."""
    key, scenario, first, rest = held(held_upstream, "panel")
    user_token = token(f"panel-{uuid.uuid4().hex[:8]}")
    try:
        elsewhere = SSEConnection(held_server.url, {
            "command": "summarize", "text": f"Started elsewhere {key}", "title": key,
            "background": True, "reasoning": True}, token=user_token)
        assert elsewhere.status == 200
        title_event = next(elsewhere.events())
        elsewhere.drop()
        stream_id = title_event.id.rpartition("-")[0]
        record = held_upstream.wait_for_request(key)
        assert record.wait_tokens(len(first), timeout=10)

        worker = service_worker(extension_context)
        extension_id = worker.url.split("/")[2]
        worker.evaluate("(settings) => chrome.storage.local.set(settings)",
                        {"serverUrl": held_server.url, "token": user_token})
        panel = extension_context.new_page()
        panel.goto(f"chrome-extension://{extension_id}/sidepanel.html")
        item = panel.locator(f"#streams li[data-stream-id='{stream_id}']")
        item.wait_for()
        assert item.get_attribute("data-state") == "running"
        assert item.locator(".stream-title").text_content() == f"Summary of {key}"
        panel.evaluate("""() => {
            const answer = document.getElementById('answer');
            window.shown = [];
            new MutationObserver(() => window.shown.push(answer.textContent))
              .observe(answer, {childList: true, characterData: true, subtree: true});
        }""")
        item.get_by_role("button").click()
        panel.wait_for_function(
            "(text) => document.getElementById('answer').textContent === text",
            arg="".join(first))
        assert panel.text_content("#title") == f"Summary of {key}"
        assert panel.is_visible("#reasoning summary")
        assert panel.text_content("#reasoning-text") == "".join(THOUGHTS)
        assert panel.get_attribute("#reasoning", "open") is None
        assert panel.get_attribute("body", "data-state") == "streaming"
        scenario.gate.set()
        panel.wait_for_selector("body[data-state='done']")
        expected = "".join(first + rest)
        assert panel.text_content("#answer") == expected
        # Every text shown after the reopen, each change once (a state change redraws the same
        # text): the snapshot's at once, then only ever longer, never a piece twice.
        shown = [text for text in panel.evaluate("() => window.shown") if text]
        changes = [text for i, text in enumerate(shown) if i == 0 or text != shown[i - 1]]
        assert changes[0] == "".join(first) and changes[-1] == expected
        assert all(later.startswith(earlier) and len(later) > len(earlier)
                   for earlier, later in zip(changes, changes[1:], strict=False))
        panel.locator(f"#streams li[data-stream-id='{stream_id}'][data-state='done']").wait_for()
        state = worker.evaluate("() => axrisi.state()")
        assert (state["status"], state["content"], state["reasoning"], state["reopened"]) == (
            "done", expected, "".join(THOUGHTS), True)
        assert [r for r in held_upstream.requests if r.scenario_key == key] == [record]
    finally:
        scenario.gate.set()
