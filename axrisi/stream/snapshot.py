"""A resume's catch-up in one event (``?catchup=snapshot``): the kept events folded together.

A reader coming back to a long answer on a slow link would otherwise get one event per content
piece it missed, thousands for a long answer. The snapshot folds the kept title, content (and
reasoning) events after the reader's position into one event that carries the id of the last
event it covers, so that the live events, and a later resume from the snapshot's id, go on
exactly where it stops: the text arrives once, whole.
"""

from __future__ import annotations

from typing import Any

from .. import jsonutil
from . import sse


def fold(stream_id: int, frames: list[bytes]) -> tuple[bytes, int]:
    """The snapshot event for ``frames`` (the kept events from a resume's position on) and how
    many of them it covers; ``(b"", 0)`` when they hold no title and no content. The terminal
    event is never folded: it follows the snapshot as usual.

    Each frame is read where :func:`sse.event` put its parts (an ``event:`` line only on
    errors, one ``data:`` line last), not parsed line by line: a 2,000-event answer is folded
    in about a millisecond.
    """
    title: str | None = None
    content: list[str] = []
    reasoning: list[str] = []
    covered = 0
    for frame in frames:
        data_at = frame.find(b"\ndata: ") + 7
        if frame.find(b"\nevent: ", 0, data_at) >= 0:
            break  # an error: the terminal event
        data = jsonutil.loads(frame[data_at:])
        if "content" in data:
            content.append(data["content"])
        elif "title" in data:
            title = data["title"]
        elif "reasoning" in data:
            reasoning.append(data["reasoning"])
        else:
            break  # the done event, or one this fold does not know: replayed as it is
        covered += 1
    if title is None and not content:
        return b"", 0
    last_id = sse.parse(frames[covered - 1])[0]
    return sse.event(last_id, {"snapshot": _folded(title, content, reasoning),
                               "commandId": stream_id}), covered


def _folded(title: str | None, content: list[str], reasoning: list[str]) -> dict[str, Any]:
    folded: dict[str, Any] = {} if title is None else {"title": title}
    folded["content"] = "".join(content)
    if reasoning:
        folded["reasoning"] = "".join(reasoning)
    return folded
