"""The demo page at GET /, driven as a person would: fill the form, press Start or Stop, read it."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest
import requests

from tests.e2e.servers import Gunicorn
from tests.fake_upstream import FakeUpstream, Scenario

from .conftest import WebOrigin, service_env

pytestmark = pytest.mark.e2e


def unique_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def open_demo(page: Any, server: Gunicorn) -> None:
    """Open the page and wait until the command catalog has loaded with the dev token."""
    page.goto(server.url + "/")
    page.wait_for_selector("#command:not([disabled]) option[value='summarize']", state="attached")


def wait_state(page: Any, state: str, timeout: float = 10_000) -> None:
    page.wait_for_selector(f"#state[data-state='{state}']", timeout=timeout)


def run_to_the_end(page: Any, button: Any) -> None:
    """Click ``button`` (Start, or a Reopen) and wait for that run, not the one before, to end
    done: the page starts a new run (in state connecting) before the click returns to it."""
    page.evaluate("() => { window.runBefore = axrisiDemo.run; }")
    button.click()
    page.wait_for_function("() => axrisiDemo.run !== window.runBefore")
    wait_state(page, "done")


def answer_text(page: Any) -> str:
    """The rendered answer's text, without the newline marked ends a block with."""
    return (page.text_content("#answer") or "").strip()


def test_demo_streams_renders_markdown_and_metrics(page: Any, server: Gunicorn,
                                                   upstream: FakeUpstream) -> None:
    """A text streams in whole, rendered as Markdown, with done state, TTFT and tokens/s."""
    key = unique_key("demo")
    tokens = ["##", " Heading", "\n\n", "Some", " **bold**", " text", " and", " a", " list:",
              "\n\n", "- one", "\n", "- two", "\n"]
    upstream.add_scenario(key, Scenario(tokens=tokens, delay=0.03, first_token_delay=0.05))
    open_demo(page, server)
    assert page.input_value("#token"), "development mode fills the token field"
    page.fill("#text", f"Rivers are long. {key}")
    page.fill("#title", "Rivers")
    page.click("#start")
    wait_state(page, "done")

    assert page.text_content("#answer h2") == "Heading"
    assert page.text_content("#answer strong") == "bold"
    assert page.locator("#answer li").all_text_contents() == ["one", "two"]
    assert page.text_content("#answer-title") == "Summary of Rivers"
    result = page.evaluate("axrisiDemo.run")
    assert result["content"] == "".join(tokens)
    assert result["done"]["done"] is True and result["done"]["finishReason"] == "stop"
    assert re.fullmatch(r"\d+ ms", page.text_content("#ttft") or "")
    tps = page.text_content("#tps") or ""
    assert re.fullmatch(r"\d+(\.\d+)?", tps) and float(tps) > 0
    assert int(page.text_content("#events") or 0) >= 2
    assert page.get_attribute("#answer", "aria-busy") == "false"
    assert page.is_disabled("#stop") and not page.is_disabled("#start")
    assert page.axrisi_seen.errors == []


def test_start_works_at_once_and_shows_model_usage_and_quota(page: Any,
                                                             server: Gunicorn) -> None:
    """A newcomer presses Start on the sample text; the page shows who answered, the tokens the
    answer cost and the requests left (GET /api/usage)."""
    open_demo(page, server)
    assert len(page.input_value("#text")) > 200
    page.wait_for_function("() => document.getElementById('quota').textContent !== '–'")
    page.click("#start")
    wait_state(page, "done")
    assert page.text_content("#model") == "test-model"
    assert re.fullmatch(r"\d+ \+ \d+", page.text_content("#usage") or "")
    page.wait_for_function(
        "() => /^\\d+ \\(100000 per 1 minute\\)$/.test(document.getElementById('quota')"
        ".textContent)")
    assert page.axrisi_seen.errors == []


def test_stop_cancels_the_upstream(page: Any, server: Gunicorn, upstream: FakeUpstream) -> None:
    """Stop aborts the fetch, the service closes its upstream request, the state says stopped."""
    key = unique_key("stop")
    upstream.add_scenario(key, Scenario(tokens=[f"w{i} " for i in range(400)], delay=0.03))
    open_demo(page, server)
    page.fill("#text", f"A long text {key}")
    page.click("#start")
    record = upstream.wait_for_request(key)
    page.wait_for_function("() => Number(document.getElementById('events').textContent) >= 3")
    page.click("#stop")
    wait_state(page, "stopped")
    assert record.wait_closed(3), "the upstream request was not closed after Stop"
    assert record.tokens_sent < 400
    assert page.is_hidden("#error")
    assert page.text_content("#answer").startswith("w0 w1 w2")


def test_stop_stops_the_model_even_with_resume_grace(page: Any, upstream: FakeUpstream,
                                                    allowed_origin: WebOrigin) -> None:
    """With 30 s of resume grace a closed connection looks like a drop, so the model would go
    on; Stop (the client's DELETE on abort) still closes the upstream within about a second."""
    key = unique_key("stop-grace")
    upstream.add_scenario(key, Scenario(tokens=[f"g{i} " for i in range(2000)], delay=0.03))
    env = service_env(upstream, allowed_origin, AXRISI_RESUME_GRACE_SECONDS="30")
    with Gunicorn(env) as graced:
        open_demo(page, graced)
        page.fill("#text", f"A long text {key}")
        page.click("#start")
        record = upstream.wait_for_request(key)
        page.wait_for_function("() => Number(document.getElementById('events').textContent) >= 3")
        stopped_at = time.monotonic()
        page.click("#stop")
        wait_state(page, "stopped")
        assert record.wait_closed(3), "the upstream request ran on through the grace"
        assert record.closed_at is not None and record.closed_at - stopped_at < 1.5


def test_show_reasoning_folds_the_thinking_above_the_answer(page: Any, server: Gunicorn,
                                                            upstream: FakeUpstream) -> None:
    """"Show reasoning" asks for the model's thinking: it is shown folded (a closed <details>)
    above the answer, as plain text, and never in the answer; unchecked, nothing is shown."""
    key = unique_key("demo-think")
    thoughts = ["First, ", "<b>read</b> ", "the text.", "\n", "Then **answer**."]
    answer = ["The", " answer", "."]
    upstream.add_scenario(key, Scenario(tokens=answer, reasoning=thoughts, delay=0.01))
    open_demo(page, server)
    assert page.is_hidden("#reasoning")
    page.check("#show-reasoning")
    page.fill("#text", f"Think first {key}")
    run_to_the_end(page, page.locator("#start"))
    assert page.is_visible("#reasoning summary")
    assert page.text_content("#reasoning summary") == "Reasoning"
    assert page.get_attribute("#reasoning", "open") is None, "the reasoning starts folded"
    assert page.is_hidden("#reasoning-text")
    assert page.text_content("#reasoning-text") == "".join(thoughts)
    assert page.locator("#reasoning-text b").count() == 0, "the thinking is text, not markup"
    assert answer_text(page) == "The answer."
    assert page.evaluate("""() => document.getElementById('reasoning').compareDocumentPosition(
        document.getElementById('answer')) & Node.DOCUMENT_POSITION_FOLLOWING""")
    page.click("#reasoning summary")
    assert page.is_visible("#reasoning-text")

    page.uncheck("#show-reasoning")
    run_to_the_end(page, page.locator("#start"))
    assert page.is_hidden("#reasoning") and page.text_content("#reasoning-text") == ""
    assert answer_text(page) == "The answer."
    labels = page.eval_on_selector_all(
        "input, select, textarea, button",
        "els => els.filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
        " && !e.textContent.trim()).map((e) => e.id)")
    assert labels == []


def test_your_streams_lists_the_answers_and_reopens_one(page: Any, server: Gunicorn,
                                                       upstream: FakeUpstream) -> None:
    """"Your streams" lists the page's answer once it exists; Reopen reads it from its start
    in one snapshot: the same title, reasoning and answer, in one content update."""
    key = unique_key("demo-list")
    tokens = ["One", " two", " three", "."]
    upstream.add_scenario(key, Scenario(tokens=tokens, reasoning=["Hm."], delay=0.01))
    open_demo(page, server)
    page.check("#show-reasoning")
    page.fill("#title", key)
    page.fill("#text", f"List me {key}")
    run_to_the_end(page, page.locator("#start"))
    stream_id = str(page.evaluate("axrisiDemo.run").get("commandId"))
    item = page.locator(f"#streams li[data-stream-id='{stream_id}'][data-state='done']")
    item.wait_for()
    assert item.locator(".stream-title").text_content() == f"Summary of {key}"
    assert page.locator("#streams li").first.get_attribute("data-stream-id") == stream_id
    assert page.get_attribute("#streams", "aria-labelledby") == "streams-heading"

    page.fill("#title", "")
    page.fill("#text", "Something else entirely.")
    run_to_the_end(page, page.locator("#start"))
    assert page.text_content("#answer-title") != f"Summary of {key}"
    run_to_the_end(page, item.get_by_role("button", name=f"Reopen “Summary of {key}” (done)"))
    assert page.text_content("#answer-title") == f"Summary of {key}"
    assert answer_text(page) == "One two three."
    assert page.text_content("#reasoning-text") == "Hm."
    assert page.text_content("#events") == "1"  # the snapshot: the whole answer at once
    assert page.evaluate("axrisiDemo.run").get("content") == "".join(tokens)
    assert page.axrisi_seen.errors == []


XSS_TOKENS = [
    "# Results\n\n",
    "<script>window.__pwned = 'script'; alert('script')</script>\n\n",
    "<img src=x onerror=\"window.__pwned = 'img'; alert('img')\">\n\n",
    "[click me](javascript:window.__pwned='md-link')\n\n",
    "<a href=\"javascript:window.__pwned='a-link'\" id=\"jslink\">link</a>\n\n",
    "<a href=\"JaVaScRiPt&colon;window.__pwned='encoded'\">encoded</a>\n\n",
    "<svg onload=\"window.__pwned='svg'\"><script>window.__pwned='svg-script'</script></svg>\n\n",
    "<iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\"></iframe>\n\n",
    "<details open ontoggle=\"window.__pwned='toggle'\"><summary>s</summary>d</details>\n\n",
    "<form><button formaction=\"javascript:window.__pwned='form'\">go</button></form>\n\n",
    "<div style=\"background:url(javascript:window.__pwned='css')\">styled</div>\n\n",
    "Safe **end**.\n",
]


def test_model_output_cannot_run_script(page: Any, server: Gunicorn,
                                        upstream: FakeUpstream) -> None:
    """Script, event handlers and javascript: links in the model's output never run."""
    key = unique_key("xss")
    upstream.add_scenario(key, Scenario(tokens=XSS_TOKENS, delay=0.01))
    open_demo(page, server)
    page.fill("#text", f"Please summarize {key}")
    page.click("#start")
    wait_state(page, "done")
    assert page.text_content("#answer strong") == "end"
    # Give any image error handler its chance, then click every link the answer kept.
    page.evaluate("""() => Promise.all([...document.querySelectorAll('#answer img')].map(
        (img) => img.complete ? null : new Promise((r) => { img.onload = img.onerror = r; })))""")
    page.evaluate("""() => document.querySelectorAll('#answer a, #answer button')
        .forEach((el) => el.click())""")
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 50)))")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.axrisi_seen.dialogs == []
    html = page.inner_html("#answer")
    assert "<script" not in html and "<iframe" not in html and "<svg" not in html
    assert page.evaluate("""() => [...document.querySelectorAll('#answer *')].flatMap(
        (el) => [...el.attributes].map((a) => a.name)).filter(
        (n) => n.startsWith('on') || n === 'style' || n === 'formaction')""") == []
    hrefs = page.evaluate("""() => [...document.querySelectorAll('#answer [href]')]
        .map((el) => el.getAttribute('href'))""")
    assert not any(h.strip().lower().startswith("javascript") for h in hrefs)


def test_csp_blocks_injected_handlers_even_without_the_sanitizer(page: Any,
                                                                 server: Gunicorn) -> None:
    """The page's CSP forbids inline script: markup inserted unsanitized still cannot run."""
    response = page.goto(server.url + "/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page.evaluate("""() => new Promise((resolve) => {
        const answer = document.getElementById('answer');
        answer.innerHTML = '<img id="raw" src="/nonexistent.png" onerror="window.__pwned=1">'
            + '<a id="raw-link" href="javascript:window.__pwned=2">x</a>';
        const img = document.getElementById('raw');
        img.addEventListener('error', () => setTimeout(resolve, 50));
    })""")
    page.click("#raw-link")
    page.evaluate("() => new Promise((r) => setTimeout(r, 50))")
    assert page.evaluate("typeof window.__pwned") == "undefined"


def test_bad_token_shows_the_error_sentence(page: Any, server: Gunicorn) -> None:
    """A refused token ends in the error state with the contract's sentence and code."""
    open_demo(page, server)
    page.fill("#token", "not-a-jwt")
    page.fill("#text", "Some text.")
    page.click("#start")
    wait_state(page, "error")
    assert page.text_content("#error") == "Unauthorized (unauthorized)"
    assert page.is_visible("#error")


def test_command_fields_follow_the_catalog(page: Any, server: Gunicorn) -> None:
    """Language and instruction inputs appear only for the commands that need them."""
    open_demo(page, server)
    assert page.is_hidden("#language") and page.is_hidden("#instruction")
    page.select_option("#command", "translate")
    assert page.is_visible("#language") and page.is_hidden("#instruction")
    page.select_option("#command", "custom")
    assert page.is_hidden("#language") and page.is_visible("#instruction")
    labels = page.eval_on_selector_all(
        "input, select, textarea",
        "els => els.filter((e) => !e.labels || e.labels.length === 0).map((e) => e.id)")
    assert labels == []


def test_page_headers_and_module_mime(server: Gunicorn) -> None:
    """GET / sends the CSP and a dev token meta; the client module has a JavaScript MIME type."""
    page = requests.get(server.url + "/", timeout=5)
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    match = re.search(r'<meta name="axrisi-dev-token" content="([^"]*)">', page.text)
    assert match and match.group(1).count(".") == 2
    client = requests.get(server.url + "/static/axrisi-client.js", timeout=5)
    assert client.status_code == 200
    assert client.headers["Content-Type"].split(";")[0] in ("text/javascript",
                                                          "application/javascript")
