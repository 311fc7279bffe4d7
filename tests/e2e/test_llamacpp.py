"""End to end against a real OpenAI-compatible server that somebody else wrote: llama.cpp's
(xllamacpp), started by gunicorn's master with the packaged SmolLM2-135M-Instruct
(axrisi/modelserver.py), answered through the same OpenAI provider as any upstream.

No part of the model server is faked: what the relay sends is compared with the same request
made straight to the server (greedy decoding, a fixed seed), and cancellation is read from the
server's own counters. Skipped without `make model`'s packages, except under CI=true.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from axrisi.modelserver import TEMPLATE_TOKENS, Backoff, model_name
from axrisi.providers.llamacpp import REPETITION_CONTROLS
from tests.sse_client import Event

from .client import SSEConnection, content_of
from .llamacpp import ModelServerView, model_server_of, require_model_packages
from .procnet import children
from .servers import Gunicorn

pytestmark = pytest.mark.timeout(300)
"""A model on a CPU shared with the rest of the run: more room than the suite's 120 s (a guard
against a hang, not a speed claim)."""

INPUT_TOKENS = 320
OUTPUT_TOKENS = 200
OPTIONS = {"temperature": 0, "seed": 42, "max_tokens": OUTPUT_TOKENS, **REPETITION_CONTROLS}
"""What the service is set to send (below, and llama.cpp's repetition controls, which it always
sends), for the same request made straight to the server."""
LLAMA_ENV = {
    "AXRISI_LOCAL_MODEL": "smollm2",
    "AXRISI_LOCAL_MODEL_TEMPERATURE": "0",
    "AXRISI_LOCAL_MODEL_SEED": "42",
    "AXRISI_LOCAL_MODEL_OUTPUT_TOKENS": str(OUTPUT_TOKENS),
    "AXRISI_LOCAL_MODEL_INPUT_TOKENS": str(INPUT_TOKENS),
    # One thread: no spinning barrier between two threads, so a busy machine (the tests'
    # own processes, or others) slows the model down instead of stalling it.
    "AXRISI_LOCAL_MODEL_THREADS": "1",
    "AXRISI_HEARTBEAT_SECONDS": "0.05",
    "AXRISI_MAX_STREAMS_PER_USER": "0",
    "AXRISI_RATE_LIMIT": "100000/minute",
}
RHINE = ("The Rhine is a river in Europe. It rises in the Swiss Alps and flows north through "
         "Germany and the Netherlands to the North Sea. Many cities lie on its banks, among them "
         "Basel, Strasbourg, Cologne and Rotterdam. Barges carry coal, grain and containers on it "
         "every day, and it has been a trade route since Roman times. Castles stand on the hills "
         "of its middle valley, and vineyards grow on the slopes. In winter its water is low; in "
         "spring the melting snow of the Alps raises it. It is one of the longest and most "
         "important rivers of Europe.")
COMMANDS = [("explain", {}), ("translate", {"language": "French"}), ("rewrite", {}),
            ("custom", {"instruction": "List the cities named in the text."})]
NOTE = re.compile(r"> Only the first ([\d,]+) of ([\d,]+) characters of the text were read "
                  r"\(the local model's limit\), so this answer covers that part\.\n\n")


@pytest.fixture(scope="module")
def service() -> Iterator[Gunicorn]:
    """The service with no API key and AXRISI_LOCAL_MODEL=smollm2: one model server."""
    require_model_packages()
    with Gunicorn(LLAMA_ENV) as gunicorn:
        yield gunicorn


@pytest.fixture(scope="module")
def model(service: Gunicorn) -> ModelServerView:
    return model_server_of(service)


def stream(service: Gunicorn, body: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """One whole stream: its events, and its terminal event's data."""
    conn = SSEConnection(service.url, body, timeout=120)
    assert conn.status == 200
    events = conn.read_all()
    conn.close()
    assert events[-1].event == "message" and events[-1].json.get("done"), events[-1].data
    return events, events[-1].json


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    """Poll until ``condition()`` is truthy (a deadline for a broken run, not a speed claim)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize(("command", "fields"), COMMANDS, ids=[c for c, _ in COMMANDS])
def test_each_command_relays_the_model_exactly(service: Gunicorn, model: ModelServerView,
                                               command: str, fields: dict[str, str]) -> None:
    """The content events join to exactly what the server writes for the same request, and the
    done event names the model and carries the server's usage."""
    events, done = stream(service, {"command": command, "text": RHINE, **fields})
    assert events[0].json["title"]
    content = content_of(events)
    direct, usage = model.chat(command, RHINE, OPTIONS, **fields)
    assert content and content == direct
    assert done["model"] == "SmolLM2-135M-Instruct" == model_name("smollm2")
    assert done["usage"] == {"promptTokens": usage["prompt_tokens"],
                             "completionTokens": usage["completion_tokens"]}
    assert done["finishReason"] in ("stop", "length")


def test_summarize_keeps_the_extractive_summary(service: Gunicorn) -> None:
    """Unless AXRISI_LOCAL_SUMMARY=model, summaries stay extractive (they beat a small model)."""
    events, done = stream(service, {"command": "summarize", "text": RHINE})
    assert done["model"] == "local"
    assert content_of(events).startswith("- ")


def long_text() -> str:
    """About 1,500 tokens of plain prose: well over what the service lets the model read."""
    topics = ["its source", "its delta", "the barges", "the castles", "the vineyards",
              "the floods", "the bridges", "the fish", "the ports", "the locks"]
    paragraphs = []
    for number in range(1, 41):
        topic = topics[number % len(topics)]
        paragraphs.append(f"Section {number} is about {topic}. The river changes from year to "
                          f"year, and {topic} change with it. People who live near it know "
                          f"{topic} well and tell stories about them to their children.")
    return "\n\n".join(paragraphs)


def test_a_long_text_is_cut_to_what_the_model_reads_and_says_so(
        service: Gunicorn, model: ModelServerView) -> None:
    """Over AXRISI_LOCAL_MODEL_INPUT_TOKENS the text is cut at a sentence end; the answer starts
    with a line saying how much was read; the model got exactly that much; the title left
    first and heartbeats kept the connection alive while the model read."""
    text = long_text()
    events, done = stream(service, {"command": "explain", "text": text})
    assert events[0].json["title"] == "Explanation"
    contents = [e for e in events if e.event == "message" and "content" in e.json]
    note = NOTE.fullmatch(contents[0].json["content"])
    assert note, contents[0].json["content"]
    read, total = (int(group.replace(",", "")) for group in note.groups())
    assert total == len(text) and 0 < read < total
    assert text[:read].endswith(".")
    assert "ping" in contents[1].comments, "heartbeats while the model read the text"
    direct, usage = model.chat("explain", text[:read], OPTIONS)
    assert "".join(e.json["content"] for e in contents[1:]) == direct
    assert done["usage"]["promptTokens"] == usage["prompt_tokens"]
    assert usage["prompt_tokens"] <= INPUT_TOKENS + TEMPLATE_TOKENS


def test_a_client_that_leaves_stops_the_model(service: Gunicorn,
                                              model: ModelServerView) -> None:
    """Closing the connection mid-answer frees the server's slot: its generated-token count for
    that request stays far below the whole answer's, and stops growing."""
    text = f"{RHINE}\n\n{RHINE.replace('Rhine', 'Danube')}"
    # A translation of both texts: the rewrite of them is too short to cut since the repetition
    # controls stopped the model from handing the text back (REPETITION_CONTROLS).
    _, whole = model.chat("translate", text, OPTIONS, language="French")
    assert whole["completion_tokens"] > 100, "the whole answer is long enough to cut"
    wait_for(lambda: model.metrics()["requests_processing"] == 0, what="an idle server")
    before = model.metrics()
    conn = SSEConnection(service.url, {"command": "translate", "text": text,
                                       "language": "French"}, timeout=120)
    received = conn.read_until(lambda e: e.event == "message" and "content" in e.json)
    assert received[-1].json["content"]
    conn.drop()
    after = wait_for(lambda: (m := model.metrics())["requests_processing"] == 0
                     and m["tokens_predicted_total"] > before["tokens_predicted_total"] and m,
                     what="the server to release the request's slot")
    generated = after["tokens_predicted_total"] - before["tokens_predicted_total"]
    assert 0 < generated < whole["completion_tokens"] / 2
    time.sleep(0.5)
    later = model.metrics()
    assert later["tokens_predicted_total"] == after["tokens_predicted_total"]
    assert later["n_decode_total"] == after["n_decode_total"]


def model_children(gunicorn: Gunicorn) -> list[int]:
    assert gunicorn.proc is not None
    return [pid for pid in children(gunicorn.proc.pid)
            if b"axrisi.modelserver" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_one_model_server_for_all_workers_outlives_their_streams(redis_server: Any) -> None:
    """Two workers share one model server. SIGTERM to the whole process group (systemctl stop,
    Ctrl-C): the stream in progress still finishes on the model, then the master stops it."""
    require_model_packages()
    env = {**LLAMA_ENV, "REDIS_URL": redis_server.url}
    with Gunicorn(env, workers=2) as gunicorn:
        assert gunicorn.proc is not None
        master = gunicorn.proc.pid
        wait_for(lambda: len(children(master)) == 3, what="two workers and the model server")
        assert len(model_children(gunicorn)) == 1
        server = model_server_of(gunicorn)
        assert server.supervisor == model_children(gunicorn)[0]
        text = f"{RHINE}\n\n{RHINE.replace('Rhine', 'Danube')}"
        conn = SSEConnection(gunicorn.url, {"command": "rewrite", "text": text}, timeout=120)
        conn.read_until(lambda e: e.event == "message" and "content" in e.json)
        os.killpg(master, signal.SIGTERM)  # gunicorn's group: master, workers, model server
        rest = conn.read_all()
        assert rest[-1].event == "message" and rest[-1].json["done"], rest[-1].data
        assert rest[-1].json["model"] == "SmolLM2-135M-Instruct"
        assert gunicorn.proc.wait(60) == 0
        wait_for(lambda: gone(server.pid), what="the model server to exit after the master")


def test_the_model_server_does_not_outlive_a_killed_master() -> None:
    """SIGKILL to the master (no hook runs): the kernel ends the model server with it."""
    require_model_packages()
    with Gunicorn(LLAMA_ENV) as gunicorn:
        assert gunicorn.proc is not None
        server = model_server_of(gunicorn)
        assert server.alive()
        os.kill(gunicorn.proc.pid, signal.SIGKILL)
        gunicorn.proc.wait(10)
        wait_for(lambda: gone(server.pid), what="the model server to die with the master")


RESTART_ENV = {**LLAMA_ENV, "AXRISI_LOCAL_MODEL_SLOTS": "2",
               "AXRISI_UPSTREAM_TIMEOUT_SECONDS": "240", "AXRISI_HEARTBEAT_SECONDS": "600"}
READ_SECONDS = 90
"""The test's own read timeout. With no heartbeat sooner than the upstream timeout, a stream
that waited for that timeout instead of ending at once would stay silent past it and fail."""


class Reader(threading.Thread):
    """Reads one stream to its end in the background: its events so far, or what broke."""

    def __init__(self, conn: SSEConnection) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.events: list[Event] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            for event in self.conn.events():
                self.events.append(event)
        except BaseException as error:  # reported by the test, not lost in the thread
            self.failure = error

    def answering(self) -> bool:
        return any(e.event == "message" and "content" in e.json for e in self.events)


def readyz(gunicorn: Gunicorn) -> int:
    return requests.get(gunicorn.url + "/readyz", timeout=10).status_code


def service_metric(gunicorn: Gunicorn, name: str) -> float:
    """One unlabelled sample of the service's /metrics (aggregated over its processes)."""
    text = requests.get(gunicorn.url + "/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} is not in /metrics"
    return float(found.group(1))


def test_a_killed_model_server_ends_its_streams_at_once_and_comes_back() -> None:
    """SIGKILL to the model server while it answers two streams and queues two: all four end
    with upstream_error at once (not after the upstream timeout), as does one started while it
    is down; /readyz is 503 meanwhile and /healthz 200; the supervisor starts a new server at
    the same address with the same key: /readyz 200, a new stream answered by the new server's
    model (its own counter holds that answer's tokens), axrisi_model_server_restarts_total up
    by one.

    The supervisor is held with SIGSTOP from before the kill until the streams have ended and
    /readyz said 503, so the test sees the down state without racing the restart (this also
    shows that readiness does not wait for the supervisor to notice: the dead server's lock
    is gone with it)."""
    require_model_packages()
    with Gunicorn(RESTART_ENV) as gunicorn:
        first = model_server_of(gunicorn)
        supervisor = first.supervisor
        assert model_children(gunicorn) == [supervisor]
        assert readyz(gunicorn) == 200
        assert service_metric(gunicorn, "axrisi_model_server_restarts_total") == 0
        text = f"{RHINE}\n\n{RHINE.replace('Rhine', 'Danube')}"  # a long answer (see above)
        readers = [Reader(SSEConnection(gunicorn.url, {"command": "rewrite", "text": text},
                                        timeout=READ_SECONDS)) for _ in range(4)]
        for reader in readers:
            assert reader.conn.status == 200
            reader.start()
        stopped = False
        try:
            wait_for(lambda: (m := first.metrics())["requests_processing"] == 2
                     and m["requests_deferred"] == 2, what="two answered, two queued")
            wait_for(lambda: any(r.answering() for r in readers), what="an answer under way")
            os.kill(supervisor, signal.SIGSTOP)
            stopped = True
            os.kill(first.pid, signal.SIGSTOP)  # nothing ends from here on, but by the kill
            assert service_metric(gunicorn, "axrisi_open_streams") == 4
            os.kill(first.pid, signal.SIGKILL)
            for reader in readers:
                reader.join(READ_SECONDS + 10)
                assert not reader.is_alive() and reader.failure is None, reader.failure
                assert reader.events[-1].event == "error", reader.events[-1]
                assert reader.events[-1].json["code"] == "upstream_error"
                assert sum(e.event == "error" or "done" in e.json for e in reader.events) == 1
            assert sum(r.answering() for r in readers) >= 1, "one was cut mid-answer"
            wait_for(lambda: readyz(gunicorn) == 503, what="/readyz 503")
            assert requests.get(gunicorn.url + "/readyz", timeout=10).json() == {
                "status": "model_server_down"}
            assert requests.get(gunicorn.url + "/healthz", timeout=10).status_code == 200
            meanwhile = SSEConnection(gunicorn.url, {"command": "explain", "text": RHINE},
                                      timeout=READ_SECONDS).read_all()
            assert meanwhile[-1].event == "error", meanwhile[-1]
            assert meanwhile[-1].json["code"] == "upstream_error"
        finally:
            if stopped:
                os.kill(supervisor, signal.SIGCONT)
            for reader in readers:
                reader.conn.close()
        wait_for(lambda: readyz(gunicorn) == 200, timeout=120, what="the restarted server")
        # The server takes its lock, then says it is ready; the supervisor prints that line.
        wait_for(lambda: ", restart 1, " in gunicorn.log(), what="the restarted server's line")
        second = model_server_of(gunicorn)
        assert second.pid != first.pid and second.supervisor == supervisor
        assert (second.root, second.key) == (first.root, first.key)
        assert service_metric(gunicorn, "axrisi_model_server_restarts_total") == 1
        log = gunicorn.log()
        assert f"the model server (pid {first.pid}) died (signal SIGKILL)" in log
        assert f"ready at {first.root} (pid {second.pid}, restart 1, " in log
        assert first.key not in log
        events, done = stream(gunicorn, {"command": "explain", "text": RHINE})
        assert done["model"] == "SmolLM2-135M-Instruct" and content_of(events)
        wait_for(lambda: second.metrics()["tokens_predicted_total"]
                 == done["usage"]["completionTokens"], what="the new server's own count")


def test_restarts_back_off_and_start_over_after_a_long_run() -> None:
    """1 s, doubling up to 30 s while servers die young or fail to start; 1 s again once one
    has served a minute."""
    backoff = Backoff()
    assert [backoff.next(served=5.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next() == 30
    assert backoff.next(served=60.0) == 1
    assert backoff.next(served=1.0) == 2


def hub_cache(home: Path, repo: str, filename: str, target: str) -> None:
    """A Hugging Face cache holding ``repo``'s ``filename`` as ``target``: what a first run's
    download leaves behind (no network here, so the test lays it out itself)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = home / "hub" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit / filename
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(target)


def test_a_hub_file_from_the_cache_and_summaries_on_the_model(tmp_path: Path) -> None:
    """AXRISI_LOCAL_MODEL=owner/repo/file.gguf goes through huggingface_hub (its cache, offline
    here); AXRISI_LOCAL_SUMMARY=model sends summarize to the model too."""
    require_model_packages()
    from axrisi.modelserver import source

    hub_cache(tmp_path, "acme/tiny-GGUF", "q4/tiny.gguf", source("smollm2").path)
    env = {**LLAMA_ENV, "AXRISI_LOCAL_MODEL": "acme/tiny-GGUF/q4/tiny.gguf",
           "AXRISI_LOCAL_SUMMARY": "model", "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    with Gunicorn(env) as gunicorn:
        assert "fetching acme/tiny-GGUF/q4/tiny.gguf" in gunicorn.log()
        events, done = stream(gunicorn, {"command": "summarize", "text": RHINE})
        assert done["model"] == "tiny"
        direct, _ = model_server_of(gunicorn).chat("summarize", RHINE, OPTIONS)
        assert content_of(events) == direct


def test_a_missing_model_stops_the_start_with_one_sentence() -> None:
    """A model file that is not there: gunicorn exits 1 before serving, saying which."""
    gunicorn = Gunicorn({"AXRISI_LOCAL_MODEL": "/nowhere/model.gguf"}).start(wait=False)
    try:
        assert gunicorn.proc is not None
        assert gunicorn.proc.wait(30) == 1
        assert "axrisi: AXRISI_LOCAL_MODEL names a file that does not exist: " \
               "/nowhere/model.gguf." in gunicorn.log()
        with pytest.raises(requests.ConnectionError):
            requests.get(gunicorn.url + "/healthz", timeout=2)
    finally:
        gunicorn.stop()
