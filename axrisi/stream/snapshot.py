"""A resume's catch-up in one event (``?catchup=snapshot``): the kept events folded together.

A reader coming back to a long answer on a slow link would otherwise get one event per content
piece it missed, thousands for a long answer. The snapshot folds the kept title, content (and
reasoning) events after the reader's position into one event that carries the id of the last
event it covers, so that the live events, and a later resume from the snapshot's id, go on
exactly where it stops: the text arrives once, whole.
"""

from __future__ import annotations

from typing import Any

from . import sse


def fold(stream_id: int, frames: list[bytes]) -> tuple[bytes, int]:
    """The snapshot event for ``frames`` (the kept events from a resume's position on) and how
    many of them it covers; ``(b"", 0)`` when they hold no title and no content. The terminal
    event is never folded: it follows the snapshot as usual."""
    title: str | None = None
    content: list[str] = []
    reasoning: list[str] = []
    covered, last_id = 0, ""
    for frame in frames:
        event_id, name, data = sse.parse(frame)
        if name is not None or not isinstance(data, dict) or data.get("done"):
            break  # the terminal event (done, or an error): the end of what can be folded
        if "title" in data:
            title = data["title"]
        elif "content" in data:
            content.append(data["content"])
        elif "reasoning" in data:
            reasoning.append(data["reasoning"])
        covered, last_id = covered + 1, event_id
    if title is None and not content:
        return b"", 0
    return sse.event(last_id, {"snapshot": _folded(title, content, reasoning),
                               "commandId": stream_id}), covered


def _folded(title: str | None, content: list[str], reasoning: list[str]) -> dict[str, Any]:
    folded: dict[str, Any] = {} if title is None else {"title": title}
    folded["content"] = "".join(content)
    if reasoning:
        folded["reasoning"] = "".join(reasoning)
    return folded
