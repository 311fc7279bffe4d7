"""The example MV3 extension (examples/extension), loaded unpacked into headless Chromium."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.e2e.servers import Gunicorn
from tests.fake_upstream import FakeUpstream, Scenario

from .conftest import CLIENT_JS, EXTENSION_DIR, token

pytestmark = pytest.mark.e2e


def service_worker(context: Any) -> Any:
    workers = [w for w in context.service_workers if w.url.endswith("/service-worker.js")]
    if workers:
        return workers[0]
    return context.wait_for_event(
        "serviceworker", predicate=lambda w: w.url.endswith("/service-worker.js"))


def test_extension_copy_of_the_client_is_current() -> None:
    """The extension's axrisi-client.js is the served client, byte for byte (sync-client.sh)."""
    assert (EXTENSION_DIR / "axrisi-client.js").read_bytes() == CLIENT_JS.read_bytes(), (
        "run examples/extension/sync-client.sh")
    manifest = json.loads((EXTENSION_DIR / "manifest.json").read_text())
    assert manifest["manifest_version"] == 3
    assert manifest["background"] == {"service_worker": "service-worker.js", "type": "module"}
    assert {"contextMenus", "storage", "sidePanel"} <= set(manifest["permissions"])


def test_extension_service_worker_streams_into_the_side_panel(
        extension_context: Any, server: Gunicorn, upstream: FakeUpstream) -> None:
    """The service worker starts, streams a summary with its stored settings, the panel shows it."""
    key = f"ext-{uuid.uuid4().hex[:10]}"
    tokens = ["Extension", " streamed", " this", "."]
    upstream.add_scenario(key, Scenario(tokens=tokens, delay=0.02))
    worker = service_worker(extension_context)
    extension_id = worker.url.split("/")[2]
    worker.evaluate(
        "(settings) => chrome.storage.local.set(settings)",
        {"serverUrl": server.url, "token": token("extension-user")})
    panel = extension_context.new_page()
    panel.goto(f"chrome-extension://{extension_id}/sidepanel.html")
    panel.wait_for_selector("body[data-state]", state="attached")
    # What a click on "Summarize with Axrisi" does (a real context-menu click cannot be scripted
    # here; sidePanel.open then fails for want of a user gesture, which the handler tolerates).
    worker.evaluate(
        "(text) => axrisi.onContextMenu({menuItemId: 'axrisi-summarize', selectionText: text},"
        " {windowId: -1, title: 'A page'})",
        f"Selected words {key}")
    panel.wait_for_selector("body[data-state='done']")
    assert panel.text_content("#answer") == "".join(tokens)
    assert panel.text_content("#title") == "Summary of A page"
    state = worker.evaluate("() => axrisi.state()")
    assert state["status"] == "done" and state["content"] == "".join(tokens)
    # And straight from the worker, the promise API with its result.
    result = worker.evaluate("(text) => axrisi.summarize({text})", f"Again {key}")
    assert result["content"] == "".join(tokens)
    # The panel's Stop button cancels a running stream, up to the upstream request.
    long_key = f"ext-stop-{uuid.uuid4().hex[:10]}"
    upstream.add_scenario(long_key, Scenario(tokens=["more "] * 500, delay=0.02))
    worker.evaluate("(text) => { axrisi.summarize({text}); }", f"Long {long_key}")
    record = upstream.wait_for_request(long_key)
    panel.wait_for_function("() => document.getElementById('answer').textContent.length > 10")
    panel.click("#stop")
    panel.wait_for_selector("body[data-state='stopped']")
    assert record.wait_closed(3), "Stop in the side panel did not close the upstream request"
    # The options page shows the stored settings and the origin to put in CORS_ORIGINS.
    options = extension_context.new_page()
    options.goto(f"chrome-extension://{extension_id}/options.html")
    options.wait_for_function("() => document.getElementById('serverUrl').value !== ''")
    assert options.input_value("#serverUrl") == server.url
    assert options.text_content("#origin") == f"chrome-extension://{extension_id}"


def test_keep_alive_calls_an_extension_api_while_streaming(
        extension_context: Any, server: Gunicorn, upstream: FakeUpstream) -> None:
    """keepAlive pings chrome.runtime.getPlatformInfo while a stream runs, and stops after."""
    key = f"ext-alive-{uuid.uuid4().hex[:10]}"
    upstream.add_scenario(key, Scenario(tokens=[f"t{i} " for i in range(12)], delay=0.05))
    worker = service_worker(extension_context)
    outcome = worker.evaluate(
        """async ({service, token, text}) => {
            const original = chrome.runtime.getPlatformInfo;
            let calls = 0;
            chrome.runtime.getPlatformInfo = (...args) => { calls++; return original(...args); };
            try {
              const result = await axrisi.client.streamCommand({baseUrl: service, token,
                command: 'summarize', text, keepAlive: 50});
              const during = calls;
              await new Promise((r) => setTimeout(r, 200));
              return {content: result.content, during, after: calls,
                      inWorker: typeof ServiceWorkerGlobalScope !== 'undefined'
                                && self instanceof ServiceWorkerGlobalScope};
            } finally {
              chrome.runtime.getPlatformInfo = original;
            }
        }""",
        {"service": server.url, "token": token("extension-user"), "text": f"Alive {key}"})
    assert outcome["inWorker"] is True
    assert outcome["content"] == "".join(f"t{i} " for i in range(12))
    assert outcome["during"] >= 4
    assert outcome["after"] == outcome["during"]


def test_side_panel_shows_the_reasoning_folded_above_the_answer(
        extension_context: Any, server: Gunicorn, upstream: FakeUpstream) -> None:
    """The worker asks for the model's reasoning; the panel shows it folded (a closed <details>)
    above the answer, as plain text; the answer is the answer alone, and the panel lists it."""
    key = f"ext-think-{uuid.uuid4().hex[:10]}"
    thoughts = ["The user ", "selected <i>text</i>", "; summarize it."]
    tokens = ["A", " summary", "."]
    upstream.add_scenario(key, Scenario(tokens=tokens, reasoning=thoughts, delay=0.01))
    worker = service_worker(extension_context)
    extension_id = worker.url.split("/")[2]
    user = token(f"thinker-{uuid.uuid4().hex[:8]}")
    worker.evaluate("(settings) => chrome.storage.local.set(settings)",
                    {"serverUrl": server.url, "token": user})
    panel = extension_context.new_page()
    panel.goto(f"chrome-extension://{extension_id}/sidepanel.html")
    panel.wait_for_selector("body[data-state]", state="attached")
    assert panel.is_hidden("#reasoning")
    result = worker.evaluate("(text) => axrisi.summarize({text, title: 'A page'})",
                             f"Selected words {key}")
    assert result["content"] == "".join(tokens) and result["reasoning"] == "".join(thoughts)
    panel.wait_for_selector("body[data-state='done']")
    assert panel.text_content("#answer") == "".join(tokens)
    assert panel.is_visible("#reasoning summary")
    assert panel.get_attribute("#reasoning", "open") is None
    assert panel.text_content("#reasoning-text") == "".join(thoughts)
    assert panel.locator("#reasoning-text i").count() == 0
    assert panel.evaluate("""() => document.getElementById('reasoning').compareDocumentPosition(
        document.getElementById('answer')) & Node.DOCUMENT_POSITION_FOLLOWING""")
    stream_id = str(worker.evaluate("() => axrisi.state().commandId"))
    item = panel.locator(f"#streams li[data-stream-id='{stream_id}'][data-state='done']")
    item.wait_for()
    assert item.locator(".stream-title").text_content() == "Summary of A page"
    assert item.get_by_role("button", name="Reopen “Summary of A page” (done)").is_enabled()
