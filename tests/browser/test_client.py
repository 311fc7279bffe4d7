"""axrisi-client.js in Chromium: in a page, in a dedicated Worker, its SSE parser, its errors and
its reconnection (against a scripted fetch, until GET /api/streams/<id> exists on the server)."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.e2e.servers import Gunicorn
from tests.fake_upstream import FakeUpstream, Scenario

from .conftest import MAX_TEXT_CHARS, token

pytestmark = pytest.mark.e2e

AWKWARD_TOKENS = ["Héllo", " wörld", " 😀", "👩‍💻", "\n", "line\r\nbreak", "\r", "\n\n",
                  "data: not an event", "\n\nid: 99\n", ": comment?", "event: error", "中文",
                  "\u2028", "\t", "\\", "\"", "end"]


def unique_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def module_page(page: Any, server: Gunicorn) -> None:
    """A page on the service's origin with the client module loaded as `window.client`."""
    page.goto(server.url + "/")
    page.evaluate("async () => { window.client = await import('/static/axrisi-client.js'); }")


def test_client_streams_inside_a_dedicated_worker(page: Any, server: Gunicorn,
                                                  upstream: FakeUpstream) -> None:
    """In a dedicated Worker (no DOM) the module streams and gets the exact content."""
    key = unique_key("worker")
    upstream.add_scenario(key, Scenario(tokens=AWKWARD_TOKENS, delay=0.005))
    # A page with no CSP on the service's origin, so that a Blob worker may start; the worker
    # imports the module from the service's origin like any other origin-bound script.
    page.goto(server.url + "/healthz")
    result = page.evaluate(
        """async ({origin, token, text}) => {
            const source = `
              self.onmessage = async ({data}) => {
                try {
                  const client = await import(data.origin + '/static/axrisi-client.js');
                  const pieces = [];
                  const result = await client.streamCommand({
                    baseUrl: data.origin, token: data.token, command: 'summarize',
                    text: data.text, title: 'Worker', onContent: (piece) => pieces.push(piece),
                  });
                  self.postMessage({ok: true, result, pieces,
                    hasDom: typeof document !== 'undefined' || typeof window !== 'undefined'});
                } catch (e) {
                  self.postMessage({ok: false, error: String(e && (e.stack || e.message || e))});
                }
              };`;
            const url = URL.createObjectURL(new Blob([source], {type: 'text/javascript'}));
            const worker = new Worker(url);
            const answer = await new Promise((resolve) => {
              worker.onmessage = (event) => resolve(event.data);
              worker.onerror = (event) => resolve({ok: false, error: event.message});
              worker.postMessage({origin, token, text});
            });
            worker.terminate();
            return answer;
        }""",
        {"origin": server.url, "token": token(), "text": f"Worker text {key}"},
    )
    assert result["ok"], result.get("error")
    assert result["hasDom"] is False
    assert result["result"]["content"] == "".join(AWKWARD_TOKENS)
    assert result["result"]["title"] == "Summary of Worker"
    assert isinstance(result["result"]["commandId"], int)
    assert "".join(result["pieces"]) == "".join(AWKWARD_TOKENS)


def test_stream_events_iterator_yields_every_event_once(page: Any, server: Gunicorn,
                                                        upstream: FakeUpstream) -> None:
    """streamEvents yields parsed {id, event, data} events, ids increasing, ending with done."""
    key = unique_key("iter")
    upstream.add_scenario(key, Scenario(tokens=["a", "b", "c"], delay=0.03))
    module_page(page, server)
    events = page.evaluate(
        """async ({token, text}) => {
            const out = [];
            for await (const e of client.streamEvents({token, command: 'summarize', text})) {
              out.push(e);
            }
            return out;
        }""",
        {"token": token(), "text": f"Iterate {key}"},
    )
    assert set(events[0]) == {"id", "event", "data"}
    payloads = [json.loads(e["data"]) for e in events]
    assert "title" in payloads[0] and payloads[-1]["done"] is True
    assert "".join(p.get("content", "") for p in payloads) == "abc"
    stream = str(payloads[0]["commandId"])
    numbers = [int(e["id"].rsplit("-", 1)[1]) for e in events]
    assert all(e["id"].rsplit("-", 1)[0] == stream for e in events)
    assert numbers == sorted(set(numbers))


def test_http_errors_surface_code_and_sentence(page: Any, server: Gunicorn) -> None:
    """Non-2xx answers reject with {status, code, error} from the JSON body and call onError."""
    module_page(page, server)
    outcomes = page.evaluate(
        """async ({good, longText}) => {
            const attempt = async (options) => {
              const seen = [];
              try {
                await client.streamCommand({command: 'summarize', text: 'x',
                                            onError: (e) => seen.push(e.code), ...options});
                return {ok: true};
              } catch (e) {
                return {name: e.name, status: e.status, code: e.code, error: e.error,
                        retryAfter: e.retryAfter, isError: e instanceof Error,
                        isAxrisi: e instanceof client.AxrisiError, seen};
              }
            };
            return {
              badToken: await attempt({token: 'not.a.jwt'}),
              noToken: await attempt({token: ''}),
              tooLarge: await attempt({token: good, text: longText}),
              unknownCommand: await attempt({token: good, command: 'dance'}),
              missingLanguage: await attempt({token: good, command: 'translate'}),
            };
        }""",
        {"good": token(), "longText": "x" * (MAX_TEXT_CHARS + 1)},
    )
    bad = outcomes["badToken"]
    assert bad == {"name": "AxrisiError", "status": 401, "code": "unauthorized",
                   "error": "Unauthorized", "retryAfter": None, "isError": True,
                   "isAxrisi": True, "seen": ["unauthorized"]}
    assert outcomes["noToken"]["code"] == "unauthorized"
    assert outcomes["tooLarge"]["status"] == 413
    assert outcomes["tooLarge"]["code"] == "too_large"
    assert str(MAX_TEXT_CHARS) in outcomes["tooLarge"]["error"]
    assert outcomes["unknownCommand"]["code"] == "unknown_command"
    assert outcomes["missingLanguage"]["code"] == "invalid_request"
    assert "language" in outcomes["missingLanguage"]["error"]


def test_error_event_calls_on_error_with_command_id(page: Any, server: Gunicorn,
                                                    upstream: FakeUpstream) -> None:
    """A terminal `event: error` calls onError with {code, error, commandId} and rejects."""
    key = unique_key("upstream500")
    upstream.add_scenario(key, Scenario(status=500))
    module_page(page, server)
    outcome = page.evaluate(
        """async ({token, text}) => {
            let seen = null, title = null;
            try {
              await client.streamCommand({token, command: 'summarize', text,
                onTitle: (t, payload) => { title = payload; },
                onError: (e) => {
                  seen = {code: e.code, error: e.error, commandId: e.commandId};
                }});
              return {ok: true};
            } catch (e) {
              return {seen, title, code: e.code, status: e.status, partial: e.partial};
            }
        }""",
        {"token": token(), "text": f"Fail upstream {key}"},
    )
    assert outcome["seen"]["code"] == "upstream_error"
    assert outcome["seen"]["error"] and "sk-upstream-secret" not in outcome["seen"]["error"]
    assert outcome["seen"]["commandId"] == outcome["title"]["commandId"]
    assert outcome["code"] == "upstream_error" and outcome["status"] == 200
    assert outcome["partial"]["content"] == ""


def test_stream_processor_buffers_chunks_and_cleans_up(page: Any, server: Gunicorn,
                                                       upstream: FakeUpstream) -> None:
    """StreamProcessor.run feeds processChunk; cleanup() aborts and the upstream closes."""
    done_key, stop_key = unique_key("proc-done"), unique_key("proc-stop")
    upstream.add_scenario(done_key, Scenario(tokens=["one ", "two ", "three"], delay=0.01))
    upstream.add_scenario(stop_key, Scenario(tokens=["x "] * 500, delay=0.02))
    module_page(page, server)
    finished = page.evaluate(
        """async ({token, text}) => {
            const updates = [];
            const p = new client.StreamProcessor({onUpdate: (t) => updates.push(t)});
            const result = await p.run({token, command: 'summarize', text});
            return {buffer: p.buffer, updates, content: result.content};
        }""",
        {"token": token(), "text": f"Process {done_key}"},
    )
    assert finished["buffer"] == finished["content"] == "one two three"
    assert finished["updates"][-1] == "one two three" and len(finished["updates"]) >= 1
    page.evaluate(
        """({token, text}) => {
            window.proc = new client.StreamProcessor({onUpdate: () => {}});
            window.procRun = window.proc.run({token, command: 'summarize', text})
              .then(() => 'finished', (e) => e.name);
        }""",
        {"token": token(), "text": f"Process {stop_key}"},
    )
    record = upstream.wait_for_request(stop_key)
    page.wait_for_function("() => window.proc.buffer.length >= 6")
    page.evaluate("() => window.proc.cleanup()")
    assert page.evaluate("() => window.procRun") == "AbortError"
    assert record.wait_closed(3), "cleanup() did not close the upstream request"


# ---- Reasoning and the caller's streams --------------------------------------------------------

THOUGHTS = ["Hmm, ", "the user wants", " a summary", "; 😀 ", "中文", "\n", "data: not an event"]
ANSWER = ["A", " short", " answer", "."]


def test_on_reasoning_gets_the_thinking_and_on_content_only_the_answer(
        page: Any, server: Gunicorn, upstream: FakeUpstream) -> None:
    """With reasoning: true, onReasoning's pieces are exactly the model's thinking (before the
    answer) and onContent's exactly the answer; without it, no reasoning reaches the page."""
    key = unique_key("think")
    upstream.add_scenario(key, Scenario(tokens=ANSWER, reasoning=THOUGHTS, delay=0.01,
                                        reasoning_delay=0.01))
    module_page(page, server)
    run = """async ({token, text, reasoning}) => {
        const order = [], thoughts = [], pieces = [], soFar = [];
        const options = {token, command: 'summarize', text,
          onReasoning: (piece, all, payload) => {
            order.push('reasoning'); thoughts.push(piece); soFar.push(all);
            if (payload.reasoning !== piece) throw new Error('payload mismatch');
          },
          onContent: (piece) => { order.push('content'); pieces.push(piece); }};
        if (reasoning !== null) options.reasoning = reasoning;
        const result = await client.streamCommand(options);
        return {thoughts, pieces, soFar, order, content: result.content,
                reasoning: result.reasoning, usage: result.done.usage};
    }"""
    text = f"Think about {key}"
    thinking = page.evaluate(run, {"token": token(), "text": text, "reasoning": True})
    assert "".join(thinking["thoughts"]) == thinking["reasoning"] == "".join(THOUGHTS)
    assert thinking["soFar"][-1] == "".join(THOUGHTS)
    assert "".join(thinking["pieces"]) == thinking["content"] == "".join(ANSWER)
    assert thinking["order"].index("content") > thinking["order"].index("reasoning")
    assert "content" not in thinking["order"][:len(thinking["thoughts"])]
    assert thinking["usage"]["reasoningTokens"] == len(THOUGHTS)
    for flag in (None, False):  # not asked for: the flag is not sent, or sent as false
        quiet = page.evaluate(run, {"token": token(), "text": text, "reasoning": flag})
        assert quiet["thoughts"] == [] and quiet["reasoning"] == ""
        assert quiet["content"] == "".join(ANSWER)


def test_list_streams_gives_the_callers_streams_and_errors_as_axrisi_errors(
        page: Any, server: Gunicorn, upstream: FakeUpstream) -> None:
    """listStreams lists a stream the caller started (newest first, as the service keeps it),
    never another user's; a refused token rejects with the client's AxrisiError."""
    first, second = unique_key("listed-a"), unique_key("listed-b")
    for key in (first, second):
        upstream.add_scenario(key, Scenario(tokens=["x", "y"], delay=0.01))
    owner, stranger = token(unique_key("owner")), token(unique_key("stranger"))
    module_page(page, server)
    outcome = page.evaluate(
        """async ({owner, stranger, texts}) => {
            const ids = [];
            for (const text of texts) {
              const result = await client.streamCommand({token: owner, command: 'explain', text,
                                                         title: text});
              ids.push(String(result.commandId));
            }
            const mine = await client.listStreams({token: async () => owner});
            const theirs = await client.listStreams({baseUrl: location.origin, token: stranger});
            const refused = await client.listStreams({token: 'not.a.jwt'}).then(
              () => null, (e) => ({isAxrisi: e instanceof client.AxrisiError, status: e.status,
                                   code: e.code, error: e.error}));
            return {ids, mine, theirs, refused};
        }""",
        {"owner": owner, "stranger": stranger, "texts": [f"Text {first}", f"Text {second}"]})
    older, newer = outcome["ids"]
    assert [entry["streamId"] for entry in outcome["mine"]] == [newer, older]
    entry = outcome["mine"][0]
    assert entry["command"] == "explain" and entry["state"] == "done"
    assert entry["title"].endswith(f"Text {second}") and entry["background"] is False
    assert entry["lastEventId"].rpartition("-")[0] == newer
    assert isinstance(entry["startedAt"], int)
    assert outcome["theirs"] == []
    assert outcome["refused"] == {"isAxrisi": True, "status": 401, "code": "unauthorized",
                                  "error": "Unauthorized"}


# ---- The SSE parser --------------------------------------------------------------------------

PARSER_STREAM = (
    "\ufeff: a comment right after the byte-order mark\r\n"
    "retry: 1500\r\n"
    "retry: 15x0\n"
    "retry:\n"
    "id: 1-0\r"
    "data: first\r\n"
    "\r\n"
    "event: title\n"
    "data: line one\n"
    "data:line two\n"
    "data:\n"
    "data:  two spaces\r"
    "data : not a data field\n"
    "\r"
    "id: 1-2\n"
    'data: {"content":"😀 héllo 中文 👩‍💻 €"}\n'
    "\n"
    "id: bad\u0000id\n"
    ": ping\r\n"
    "data: after a NUL id\n"
    "\n"
    "event: error\n"
    "\n"
    "data: type was reset\n"
    "\n"
    "id\n"
    "data\n"
    "\n"
    "unknown: field\n"
    "data:x\r\n\r\n"
    "data: never dispatched, no blank line after it"
)
PARSER_EXPECTED = [
    {"id": "1-0", "event": "message", "data": "first"},
    {"id": "1-0", "event": "title", "data": "line one\nline two\n\n two spaces"},
    {"id": "1-2", "event": "message", "data": '{"content":"😀 héllo 中文 👩‍💻 €"}'},
    {"id": "1-2", "event": "message", "data": "after a NUL id"},
    {"id": "1-2", "event": "message", "data": "type was reset"},
    {"id": "", "event": "message", "data": ""},
    {"id": "", "event": "message", "data": "x"},
]


def test_parser_gives_the_same_events_at_every_split(page: Any, server: Gunicorn) -> None:
    """The same bytes split at every offset (and every pair) parse to identical, correct events."""
    module_page(page, server)
    outcome = page.evaluate(
        """(streamText) => {
            const bytes = new TextEncoder().encode(streamText);
            const viaBytes = (chunks) => {
              const parser = new client.SSEParser();
              const events = [];
              for (const c of chunks) events.push(...parser.feedBytes(c));
              events.push(...parser.feedBytes(null));
              return {events: JSON.stringify(events), retry: parser.retry};
            };
            const viaText = (chunks) => {
              // The caller's own TextDecoder in stream mode, feeding text.
              const decoder = new TextDecoder('utf-8');
              const parser = new client.SSEParser();
              const events = [];
              for (const c of chunks) {
                events.push(...parser.feed(decoder.decode(c, {stream: true})));
              }
              events.push(...parser.feed(decoder.decode()));
              parser.end();
              return {events: JSON.stringify(events), retry: parser.retry};
            };
            const whole = viaBytes([bytes]);
            const mismatches = [];
            const check = (label, got) => {
              if (got.events !== whole.events || got.retry !== whole.retry) mismatches.push(label);
            };
            for (let i = 0; i <= bytes.length; i++) {
              const chunks = [bytes.subarray(0, i), bytes.subarray(i)];
              check(`bytes@${i}`, viaBytes(chunks));
              check(`text@${i}`, viaText(chunks));
            }
            let pairs = 0;
            for (let i = 1; i < bytes.length; i++) {
              for (let j = i + 1; j < bytes.length; j++) {
                pairs++;
                check(`bytes@${i},${j}`, viaBytes(
                  [bytes.subarray(0, i), bytes.subarray(i, j), bytes.subarray(j)]));
              }
            }
            const single = [];
            for (let i = 0; i < bytes.length; i++) single.push(bytes.subarray(i, i + 1));
            check('byte-by-byte', viaBytes(single));
            return {whole: JSON.parse(whole.events), retry: whole.retry, length: bytes.length,
                    pairs, mismatches: mismatches.slice(0, 20), mismatchCount: mismatches.length};
        }""",
        PARSER_STREAM,
    )
    assert outcome["whole"] == PARSER_EXPECTED
    assert outcome["retry"] == 1500
    assert outcome["mismatchCount"] == 0, outcome["mismatches"]
    assert outcome["pairs"] > 10_000


def test_parser_reports_comments_and_a_crlf_split_gives_one_event(page: Any,
                                                                   server: Gunicorn) -> None:
    """eventsource-parser #17: a CR ending one chunk and an LF opening the next end one line."""
    module_page(page, server)
    outcome = page.evaluate(
        """() => {
            const comments = [];
            const parser = new client.SSEParser({onComment: (c) => comments.push(c)});
            const events = [
              ...parser.feed('data: a\\r'), ...parser.feed('\\n'), ...parser.feed('\\r'),
              ...parser.feed('\\n: ping\\r'), ...parser.feed(''),
              ...parser.feed('\\ndata: b\\r\\r'),
            ];
            return {events: events.map((e) => e.data), comments};
        }""")
    assert outcome == {"events": ["a", "b"], "comments": [" ping"]}


# ---- web-platform-tests eventsource/format-* ---------------------------------------------------
#
# The repository has no vendored copy of WPT: these cases are rebuilt from the WPT files
# (eventsource/format-*.any.js / .htm and their servers resources/message.py, last-event-id.py,
# last-event-id2.py), byte for byte where WPT gives the bytes. A WPT test asserts on some of the
# events (say the first message, or that one never arrives); the full lists below follow from the
# HTML standard's event stream interpretation, and a test below checks every one of them against
# Chromium's own EventSource fed the same bytes.
#
# A case is the bodies of its connections in order (a server answering by Last-Event-ID is
# modelled by the body it gives for the id the parser ends the previous connection with, and the
# test checks that id), the events across all of them, the parser's `lastEventId` after each
# connection (what a client sends as Last-Event-ID) and its `retry`.


def wpt_message(message: str, newline: bool = True) -> str:
    """A body of WPT's resources/message.py: the message, "\\n\\n" unless `newline=none`, "\\n"."""
    return message + ("\n\n" if newline else "") + "\n"


def wpt_event(data: str, event_id: str = "", event: str = "message") -> dict[str, str]:
    return {"id": event_id, "event": event, "data": data}


def wpt_case(name: str, connections: list[str], events: list[dict[str, str]],
             last_ids: list[str] | None = None, retry: int | None = None) -> dict[str, Any]:
    return {"name": name, "connections": connections, "events": events,
            "lastIds": last_ids if last_ids is not None else [""] * len(connections),
            "retry": retry}


WPT_LONG_COMMENT = "x" * 2048
"""format-comments: `(new Array(2*1024+1)).join("x")`."""
WPT_NULL_IDS = ["\0\0", "x\0", "\0x", "x\0x", " \0"]
"""format-field-id-null: ids holding U+0000 are ignored, and Last-Event-ID is never sent."""

WPT_FORMAT_CASES = [
    # The case: `id:test` sits in a block that never got its blank line, so it is not
    # the last event id: the reconnection sends none, and the replayed test1 has id "".
    wpt_case("format-data-before-final-empty-line",
             [wpt_message("retry:1000\ndata:test1\n\nid:test\ndata:test2", newline=False)] * 2,
             [wpt_event("test1"), wpt_event("test1")], ["", ""], retry=1000),
    # last-event-id.py: "id: …" the first time, then echoes the Last-Event-ID it receives.
    wpt_case("format-field-id",
             ["id: …\nretry: 200\ndata: hello\n\n", "data: …\n\n"],
             [wpt_event("hello", "…"), wpt_event("…", "…")], ["…", "…"], retry=200),
    wpt_case("format-field-id-2",
             ["id: …\nretry: 200\ndata: hello\n\n", "data: …\n\n", "data: …\n\n"],
             [wpt_event("hello", "…"), wpt_event("…", "…"), wpt_event("…", "…")],
             ["…", "…", "…"], retry=200),
    *[wpt_case(f"format-field-id-null {value!r}",
               [f"id: {value}\nretry: 200\ndata: hello\n\n"] * 2,
               [wpt_event("hello"), wpt_event("hello")], ["", ""], retry=200)
      for value in WPT_NULL_IDS],
    # last-event-id2.py, the three kinds of format-field-id-3.
    wpt_case("format-field-id-3 persists", ["id: 1\ndata: 1\n\ndata:2\n\n"],
             [wpt_event("1", "1"), wpt_event("2", "1")], ["1"]),
    wpt_case("format-field-id-3 changes and persists",
             ["id: 1\ndata: 1\n\nid: 2\ndata:2\n\ndata:3\n\n"],
             [wpt_event("1", "1"), wpt_event("2", "2"), wpt_event("3", "2")], ["2"]),
    wpt_case("format-field-id-3 resets", ["id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n"],
             [wpt_event("1", "1"), wpt_event("2"), wpt_event("3")], [""]),
    wpt_case("format-field-retry", [wpt_message("retry:02000\ndata:x")], [wpt_event("x")],
             retry=2000),
    wpt_case("format-field-retry-bogus", [wpt_message("retry:2000\nretry:1000x\ndata:x")],
             [wpt_event("x")], retry=2000),
    wpt_case("format-comments",
             [wpt_message("data:1\r:\0\n:\r\ndata:2\n:" + WPT_LONG_COMMENT
                          + "\rdata:3\n:data:fail\r:" + WPT_LONG_COMMENT + "\ndata:4\n",
                          newline=False)],
             [wpt_event("1\n2\n3\n4")]),
    wpt_case("format-newlines",
             [wpt_message("data:test\r\ndata\ndata:test\r\n\r", newline=False)],
             [wpt_event("test\n\ntest")]),
    wpt_case("format-null-character", [wpt_message("data:\0\n\n")], [wpt_event("\0")]),
    wpt_case("format-bom", [wpt_message("\ufeffdata:1\n\n\ufeffdata:2\n\ndata:3")],
             [wpt_event("1"), wpt_event("3")]),
    wpt_case("format-bom-2", [wpt_message("\ufeff\ufeffdata:1\n\ndata:2\n\ndata:3")],
             [wpt_event("2"), wpt_event("3")]),
    wpt_case("format-field-parsing",
             [wpt_message("data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\nda-ta:3\r"
                          "data_5\ndata:3\rdata:\r\n data:32\ndata:4\n", newline=False)],
             [wpt_event("\0\n 2\n1\n3\n\n4")]),
    wpt_case("format-field-unknown",
             [wpt_message("data:test\n data\ndata\nfoobar:xxx\njustsometext\n"
                          ":thisisacommentyay\ndata:test")],
             [wpt_event("test\n\ntest")]),
    wpt_case("format-leading-space", [wpt_message("data:\ttest\rdata: \ndata:test")],
             [wpt_event("\ttest\n\ntest")]),
    wpt_case("format-field-data", [wpt_message("data:\n\ndata\ndata\n\ndata:test")],
             [wpt_event(""), wpt_event("\n"), wpt_event("test")]),
    wpt_case("format-field-event", [wpt_message("event:test\ndata:x\n\ndata:x")],
             [wpt_event("x", event="test"), wpt_event("x")]),
    wpt_case("format-field-event-empty", [wpt_message("event: \ndata:data")],
             [wpt_event("data")]),
    wpt_case("format-utf-8", [wpt_message("data:ok…")], [wpt_event("ok…")]),
]
WPT_PAIR_LIMIT = 256
"""Streams up to this many bytes are also split at every pair of offsets."""

WPT_SPLIT_RUNNER = """({cases, pairLimit}) => {
  const encoder = new TextEncoder();
  // One parser across a case's connections, as a client reusing it would: feedBytes(null)
  // (or end()) after each, and lastEventId is what it would send to reconnect.
  const viaBytes = (connections, split) => {
    const parser = new client.SSEParser();
    const events = [], lastIds = [];
    for (const bytes of connections) {
      for (const chunk of split(bytes)) events.push(...parser.feedBytes(chunk));
      events.push(...parser.feedBytes(null));
      lastIds.push(parser.lastEventId);
    }
    return JSON.stringify({events, lastIds, retry: parser.retry});
  };
  const viaText = (connections, split) => {
    const parser = new client.SSEParser();
    const events = [], lastIds = [];
    for (const bytes of connections) {
      const decoder = new TextDecoder('utf-8');  // The caller's own, one per connection.
      for (const chunk of split(bytes)) {
        events.push(...parser.feed(decoder.decode(chunk, {stream: true})));
      }
      events.push(...parser.feed(decoder.decode()), ...parser.end());
      lastIds.push(parser.lastEventId);
    }
    return JSON.stringify({events, lastIds, retry: parser.retry});
  };
  const outcome = {};
  for (const c of cases) {
    const connections = c.connections.map((text) => encoder.encode(text));
    const whole = viaBytes(connections, (bytes) => [bytes]);
    const longest = Math.max(...connections.map((bytes) => bytes.length));
    const mismatches = [];
    let runs = 0;
    const check = (label, got) => { runs++; if (got !== whole) mismatches.push(label); };
    for (let i = 0; i <= longest; i++) {
      const split = (bytes) => [bytes.subarray(0, i), bytes.subarray(i)];
      check(`bytes@${i}`, viaBytes(connections, split));
      check(`text@${i}`, viaText(connections, split));
    }
    if (longest <= pairLimit) {
      for (let i = 1; i < longest; i++) {
        for (let j = i + 1; j < longest; j++) {
          check(`bytes@${i},${j}`, viaBytes(connections, (bytes) =>
            [bytes.subarray(0, i), bytes.subarray(i, j), bytes.subarray(j)]));
        }
      }
    }
    check('byte-by-byte', viaBytes(connections, (bytes) =>
      Array.from(bytes, (_, i) => bytes.subarray(i, i + 1))));
    outcome[c.name] = {...JSON.parse(whole), runs, mismatchCount: mismatches.length,
                       mismatches: mismatches.slice(0, 10)};
  }
  return outcome;
}"""


def test_parser_passes_the_wpt_format_cases_at_every_split(page: Any, server: Gunicorn) -> None:
    """Each WPT eventsource/format-* case, at every split of every connection's bytes (and
    every pair for the short ones), byte by byte, through feedBytes and through feed: the events,
    their data, types and ids, the last event id after each connection, and retry."""
    module_page(page, server)
    outcome = page.evaluate(WPT_SPLIT_RUNNER,
                            {"cases": WPT_FORMAT_CASES, "pairLimit": WPT_PAIR_LIMIT})
    wrong = {}
    for case in WPT_FORMAT_CASES:
        got = outcome[case["name"]]
        if got["mismatchCount"]:
            wrong[case["name"]] = got["mismatches"]
        assert got["events"] == case["events"], case["name"]
        assert got["lastIds"] == case["lastIds"], case["name"]
        assert got["retry"] == case["retry"], case["name"]
        assert got["runs"] > 2 * len(case["connections"][0].encode())
    assert not wrong, wrong


def test_parser_ignores_an_unterminated_id_or_retry_and_keeps_a_set_id(page: Any,
                                                                      server: Gunicorn) -> None:
    """The rules behind format-data-before-final-empty-line, one at a time: an `id:` whose
    block has no blank line, or a last line without its line end, never takes effect; a blank
    line takes the id even without data; a set lastEventId carries into the next connection."""
    module_page(page, server)
    outcome = page.evaluate(
        """() => {
            const parser = new client.SSEParser();
            const seen = [];
            const step = (label, events) => seen.push(
              {label, events: events.map((e) => [e.id, e.data]), lastEventId: parser.lastEventId,
               retry: parser.retry});
            step('dispatched', parser.feed('id: 7-1\\ndata: a\\n\\n'));
            step('pending id', parser.feed('id: 7-2\\ndata: b\\n'));
            step('end', parser.end());
            step('next connection', parser.feed('data: c\\n\\n'));
            step('unterminated line', parser.feed('id: 7-3\\n\\nretry: 5\\nid: 7-4'));
            step('end again', parser.end());
            step('unterminated retry', parser.feed('retry: 9'));
            step('end a third time', parser.end());
            parser.lastEventId = '9-0';
            step('set', parser.feed('data: d\\n\\n'));
            return seen;
        }""")
    assert outcome == [
        {"label": "dispatched", "events": [["7-1", "a"]], "lastEventId": "7-1", "retry": None},
        {"label": "pending id", "events": [], "lastEventId": "7-1", "retry": None},
        {"label": "end", "events": [], "lastEventId": "7-1", "retry": None},
        {"label": "next connection", "events": [["7-1", "c"]], "lastEventId": "7-1",
         "retry": None},
        # A blank line ends a block without data: its id counts (the standard's dispatch step 1).
        {"label": "unterminated line", "events": [], "lastEventId": "7-3", "retry": 5},
        {"label": "end again", "events": [], "lastEventId": "7-3", "retry": 5},
        {"label": "unterminated retry", "events": [], "lastEventId": "7-3", "retry": 5},
        {"label": "end a third time", "events": [], "lastEventId": "7-3", "retry": 5},
        {"label": "set", "events": [["9-0", "d"]], "lastEventId": "9-0", "retry": 5},
    ]


WPT_MIME_CASES = [
    # (name, Content-Type, body, the event expected, or None when the connection must fail)
    ("format-mime-trailing-semicolon", "text/event-stream;", wpt_message("data: data"), "data"),
    ("format-mime-bogus", "x bogus", wpt_message("data: data"), None),
    ("format-mime-valid-bogus", "text/x-bogus", wpt_message("data: data"), None),
    ("format-utf-8", "text/event-stream;charset=windows-1252", wpt_message("data:ok…"), "ok…"),
    # Not WPT: the MIME type's essence must be text/event-stream, case aside.
    ("essence, case and whitespace", "Text/Event-Stream ; charset=utf-8",
     wpt_message("data: data"), "data"),
    ("a longer subtype", "text/event-stream-bogus", wpt_message("data: data"), None),
]


def test_stream_events_checks_the_mime_type_like_eventsource(page: Any, server: Gunicorn) -> None:
    """WPT format-mime-*: an answer that is not text/event-stream fails the connection (code
    bad_response, no reconnection); parameters are ignored and the body is always UTF-8."""
    module_page(page, server)
    outcome = page.evaluate(
        """async (cases) => {
            const results = {};
            for (const [name, type, body] of cases) {
              let calls = 0;
              const fetch = async () => {
                calls++;
                return new Response(new TextEncoder().encode(body),
                                    {status: 200, headers: {'Content-Type': type}});
              };
              try {
                for await (const event of client.streamEvents(
                    {baseUrl: 'http://axrisi.test', token: 't', command: 'summarize', text: 'x',
                     fetch, maxRetries: 0})) {
                  results[name] = {event: event.data, calls};
                  break;
                }
              } catch (e) {
                results[name] = {code: e.code, status: e.status, calls};
              }
            }
            return results;
        }""",
        [list(case[:3]) for case in WPT_MIME_CASES])
    for name, _, _, expected in WPT_MIME_CASES:
        if expected is None:
            assert outcome[name] == {"code": "bad_response", "status": 200, "calls": 1}, name
        else:
            assert outcome[name] == {"event": expected, "calls": 1}, name


class _WptHandler(BaseHTTPRequestHandler):
    """WPT's servers for the format-* cases: an empty page at `/`, and at `/wpt-format/<n>` the
    bodies of case n, one per request in order (the last again after that), recording the
    Last-Event-ID each request sent. HTTP/1.0: each answer ends its connection."""

    server: _WptServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path == "/":
            body, kind = b"<!doctype html><title>wpt format</title>", "text/html; charset=utf-8"
        else:
            index = int(self.path.rsplit("/", 1)[1])
            sent = self.headers.get("Last-Event-ID")
            # http.server reads header bytes as latin-1; EventSource sends the id as UTF-8.
            seen = self.server.served.setdefault(index, [])
            seen.append(None if sent is None else sent.encode("latin-1").decode("utf-8"))
            bodies = WPT_FORMAT_CASES[index]["connections"]
            body = bodies[min(len(seen), len(bodies)) - 1].encode()
            kind = "text/event-stream"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the API's name
        pass


class _WptServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _WptHandler)
        self.served: dict[int, list[str | None]] = {}


def test_wpt_format_cases_match_chromiums_own_eventsource(page: Any) -> None:
    """The expectations above are the browser's: Chromium's EventSource, served the same bodies
    connection after connection, dispatches the same events (data, type, lastEventId) and
    reconnects with the same Last-Event-ID (none when it is empty)."""
    wpt = _WptServer()
    thread = threading.Thread(target=wpt.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"http://127.0.0.1:{wpt.server_address[1]}/")
        native = page.evaluate(
            """async (cases) => {
                const run = (index, c) => new Promise((resolve) => {
                  const source = new EventSource(`/wpt-format/${index}`);
                  const events = [];
                  let ended = 0;
                  for (const type of new Set(['message', ...c.events.map((e) => e.event)])) {
                    source.addEventListener(type, (e) => events.push(
                      {id: e.lastEventId, event: e.type, data: e.data}));
                  }
                  const timer = setTimeout(
                    () => { source.close(); resolve({events, timeout: true}); }, 8000);
                  source.onerror = () => {
                    if (++ended < c.connections.length) return;  // It reconnects by itself.
                    source.close();
                    clearTimeout(timer);
                    resolve({events});
                  };
                });
                const results = [];
                for (const [index, c] of cases.entries()) results.push(await run(index, c));
                return results;
            }""",
            WPT_FORMAT_CASES)
    finally:
        wpt.shutdown()
        wpt.server_close()
    for index, case in enumerate(WPT_FORMAT_CASES):
        assert native[index] == {"events": case["events"]}, case["name"]
        sent = [None] + [last or None for last in case["lastIds"][:-1]]
        assert wpt.served[index] == sent, case["name"]


# ---- Reconnection, against a scripted fetch ----------------------------------------------------

RECONNECT_HELPERS = """
  window.sse = (lines) => lines.join('\\n') + '\\n\\n';
  window.scriptedFetch = (script, calls) => async (url, init) => {
    calls.push({url, method: init.method, headers: init.headers, at: performance.now()});
    const step = script.shift();
    if (!step) throw new TypeError('Failed to fetch');
    if (step.status && step.status !== 200) {
      return new Response(JSON.stringify(step.body), {status: step.status,
        headers: {'Content-Type': 'application/json', ...(step.headers || {})}});
    }
    const encoder = new TextEncoder();
    const chunks = [...step.chunks];
    // One chunk per pull: an error() in start() would drop the chunks still queued.
    const body = new ReadableStream({
      pull(controller) {
        if (chunks.length) controller.enqueue(encoder.encode(chunks.shift()));
        else if (step.drop) controller.error(new TypeError('network error'));
        else controller.close();
      },
    });
    return new Response(body, {status: 200,
      headers: {'Content-Type': 'text/event-stream; charset=utf-8'}});
  };
"""


def test_reconnects_with_last_event_id_and_skips_duplicates(page: Any,
                                                            server: Gunicorn) -> None:
    """A dropped stream resumes via GET /api/streams/<id> with Last-Event-ID, no duplicates."""
    module_page(page, server)
    page.evaluate(f"() => {{ {RECONNECT_HELPERS} }}")
    outcome = page.evaluate(
        """async () => {
            const ev = (n, payload) => sse([`id: 77-${n}`, `data: ${JSON.stringify(payload)}`]);
            const script = [
              {chunks: ['retry: 20\\n\\n', ev(0, {title: 'T', commandId: 77}),
                        ev(1, {content: 'a', commandId: 77}), 'id: 77-2\\ndata: {"cont'],
               drop: true},
              {drop: true, chunks: []},
              {chunks: [ev(1, {content: 'a', commandId: 77}), ev(2, {content: 'b', commandId: 77}),
                        ev(3, {content: 'c', commandId: 77})]},
              {chunks: [ev(3, {content: 'c', commandId: 77}), ev(4, {content: 'd', commandId: 77}),
                        ev(5, {done: true, commandId: 77})]},
            ];
            const calls = [], pieces = [], reconnects = [];
            const result = await client.streamCommand({
              baseUrl: 'http://axrisi.test', token: 't0k', command: 'summarize', text: 'x',
              fetch: scriptedFetch(script, calls), maxRetries: 3,
              onContent: (p) => pieces.push(p),
              onReconnect: (info) => reconnects.push({attempt: info.attempt, delay: info.delay,
                                                      lastEventId: info.lastEventId}),
            });
            return {content: result.content, pieces, reconnects, commandId: result.commandId,
              calls: calls.map((c) => ({url: c.url, method: c.method,
                lastEventId: c.headers['Last-Event-ID'] || null,
                auth: c.headers.Authorization})),
              gaps: calls.slice(1).map((c, i) => c.at - calls[i].at)};
        }""")
    assert outcome["content"] == "abcd"
    assert outcome["pieces"] == ["a", "b", "c", "d"]
    assert outcome["commandId"] == 77
    # streamCommand resumes with ?catchup=snapshot (a server without it ignores the parameter
    # and replays, as this script does: the client takes either).
    assert [(c["method"], c["url"], c["lastEventId"]) for c in outcome["calls"]] == [
        ("POST", "http://axrisi.test/api/run", None),
        ("GET", "http://axrisi.test/api/streams/77?catchup=snapshot", "77-1"),
        ("GET", "http://axrisi.test/api/streams/77?catchup=snapshot", "77-1"),
        ("GET", "http://axrisi.test/api/streams/77?catchup=snapshot", "77-3"),
    ]
    assert all(c["auth"] == "Bearer t0k" for c in outcome["calls"])
    # The server's retry: 20 ms, doubled after a failed attempt, back to 20 after progress.
    assert [r["delay"] for r in outcome["reconnects"]] == [20, 40, 20]
    assert [r["lastEventId"] for r in outcome["reconnects"]] == ["77-1", "77-1", "77-3"]
    assert outcome["gaps"][0] >= 15 and outcome["gaps"][1] >= 35


def test_resume_404_ends_with_not_found_and_retries_are_bounded(page: Any,
                                                                server: Gunicorn) -> None:
    """A 404 on resume ends with code not_found; a dead server ends after maxRetries tries."""
    module_page(page, server)
    page.evaluate(f"() => {{ {RECONNECT_HELPERS} }}")
    outcome = page.evaluate(
        """async () => {
            const first = {chunks: ['retry: 5\\n\\n',
                                    sse(['id: 9-0', 'data: {"title":"T","commandId":9}'])],
                           drop: true};
            const run = async (script, maxRetries) => {
              const calls = [], errors = [];
              try {
                await client.streamCommand({baseUrl: 'http://axrisi.test', token: 't',
                  command: 'summarize', text: 'x', fetch: scriptedFetch(script, calls),
                  maxRetries, onError: (e) => errors.push(e.code)});
                return {ok: true};
              } catch (e) {
                return {code: e.code, status: e.status, error: e.error, errors,
                        calls: calls.length};
              }
            };
            return {
              notFound: await run([first, {status: 404,
                body: {error: 'That stream is gone.', code: 'not_found'}}], 3),
              exhausted: await run([first], 2),
              noRetries: await run([first], 0),
            };
        }""")
    assert outcome["notFound"] == {"code": "not_found", "status": 404,
                                   "error": "That stream is gone.", "errors": ["not_found"],
                                   "calls": 2}
    assert outcome["exhausted"]["code"] == "network_error"
    assert outcome["exhausted"]["errors"] == ["network_error"]
    assert outcome["exhausted"]["calls"] == 3  # The POST, then two resume attempts.
    assert outcome["noRetries"]["calls"] == 1


def test_abort_during_reconnect_wait_stops_at_once(page: Any, server: Gunicorn) -> None:
    """Aborting while waiting to reconnect rejects with AbortError and does not resume; its one
    more request is the DELETE that stops the stream on the server (resume grace may keep it
    running otherwise), with the same token."""
    module_page(page, server)
    page.evaluate(f"() => {{ {RECONNECT_HELPERS} }}")
    outcome = page.evaluate(
        """async () => {
            const calls = [], errors = [];
            const controller = new AbortController();
            const script = [{chunks: ['retry: 60000\\n\\n',
                                      sse(['id: 5-0', 'data: {"title":"T","commandId":5}'])],
                             drop: true}];
            const started = performance.now();
            const pending = client.streamCommand({baseUrl: 'http://axrisi.test', token: 't',
              command: 'summarize', text: 'x', fetch: scriptedFetch(script, calls),
              signal: controller.signal, onError: (e) => errors.push(e.code),
              onReconnect: () => setTimeout(() => controller.abort(), 10)});
            try { await pending; return {ok: true}; }
            catch (e) {
              await new Promise((resolve) => setTimeout(resolve, 50));  // the DELETE is async
              return {name: e.name, errors, elapsed: performance.now() - started,
                      calls: calls.map((c) => [c.method, c.url, c.headers.Authorization])};
            }
        }""")
    assert outcome["name"] == "AbortError"
    assert outcome["errors"] == []
    assert outcome["calls"] == [["POST", "http://axrisi.test/api/run", "Bearer t"],
                                ["DELETE", "http://axrisi.test/api/streams/5", "Bearer t"]]
    assert outcome["elapsed"] < 5000
