"""The OpenAI provider against the real fake upstream (loopback HTTP), in process.

What a long open stream keeps matters at thousands of streams: these tests look at the objects a
running stream still holds once its request is sent.
"""

from __future__ import annotations

import gevent

from axrisi.providers.base import Prompt
from axrisi.providers.openai_compat import OpenAIProvider
from axrisi.stream.eventlog import EventLog
from axrisi.stream.generation import Generation
from tests.fake_upstream import FakeUpstream, Scenario

PAGE = "A long page. " * 5000


def page_prompt(key: str) -> Prompt:
    return Prompt(command="summarize", system="Summarize.", user=f"<text>{key} {PAGE}</text>",
                  text=PAGE)


def test_a_running_stream_keeps_neither_the_text_nor_the_request_body() -> None:
    with FakeUpstream() as upstream:
        upstream.add_scenario("keep-check", Scenario(tokens=["a", "b"], delay=0.05))
        provider = OpenAIProvider("sk-test", upstream.base_url, "m", 10)
        items = provider.stream(page_prompt("keep-check"))
        assert next(items) == "a"
        record = upstream.wait_for_request("keep-check")
        assert PAGE in record.body["messages"][1]["content"]  # the text was sent...
        frame = items.gi_frame.f_locals  # type: ignore[attr-defined]
        assert "prompt" not in frame  # ...and is not kept by the running stream:
        response = frame["response"]
        assert response.request.read() == b""  # no copy of the encoded body either
        assert response.request.url == f"{upstream.base_url}/chat/completions"
        assert list(items)[-1].reason == "stop"


def test_a_generation_lets_go_of_its_prompt_once_started() -> None:
    with FakeUpstream() as upstream:
        upstream.add_scenario("gen-check", Scenario(tokens=["x"], delay=0.05))
        provider = OpenAIProvider("sk-test", upstream.base_url, "m", 10)
        prompt = page_prompt("gen-check")
        generation = Generation(EventLog(1), provider, prompt, upstream_timeout=5)
        chars = len(prompt.system) + len(prompt.user)
        generation.start()
        gevent.sleep(0.01)
        assert generation.prompt is None
        assert generation.prompt_chars == chars
        generation.greenlet.join(5)
        assert generation.outcome == "done"
