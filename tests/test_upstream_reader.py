"""The upstream body's parser: content and reasoning apart, in order, grouped per network read."""

from __future__ import annotations

import json
from typing import Any

from axrisi.providers.base import Reasoning, Usage
from axrisi.providers.openai_compat import _Reader


def line(delta: dict[str, Any], **extra: Any) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}], **extra}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def test_one_read_keeps_the_order_of_reasoning_and_content() -> None:
    """Deltas of the same kind in one read join; a change of kind starts a new piece."""
    reader = _Reader("m")
    read = (line({"reasoning_content": "a"}) + line({"reasoning_content": "b", "content": None})
            + line({"content": "X"}) + line({"content": "Y"})
            + line({"reasoning": "c"}) + line({"content": "Z"}))
    assert reader.feed(read) == [Reasoning("ab"), "XY", Reasoning("c"), "Z"]


def test_content_alone_is_one_string_per_read_as_before() -> None:
    reader = _Reader("m")
    assert reader.feed(line({"content": "to"}) + line({"content": "ken"})) == ["token"]
    assert reader.feed(line({"role": "assistant", "content": ""})) == []


def test_reasoning_tokens_come_from_the_usage_details() -> None:
    reader = _Reader("m")
    usage = {"prompt_tokens": 3, "completion_tokens": 9,
             "completion_tokens_details": {"reasoning_tokens": 7}}
    reader.feed(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"
                + b"data: [DONE]\n\n")
    assert reader.finish().usage == Usage(3, 9, 7)
    plain = _Reader("m")
    plain.feed(b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n')
    assert plain.usage == Usage(1, 2, None)
