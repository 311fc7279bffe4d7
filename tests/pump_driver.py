"""Runs one generation as a gevent worker does (sockets monkey-patched) and prints what it saw.

``tests/test_pump.py`` starts it as ``python -m tests.pump_driver CASE BASE_URL KEY``: the
pump reads gevent's own sockets only, and the test process cannot be monkey-patched (its fake
upstream runs in real threads), so the generation runs here and the upstream's side stays there.
Prints one JSON object: what the client would have seen and how the generation went.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from axrisi.providers.base import Prompt  # noqa: E402
from axrisi.providers.openai_compat import OpenAIProvider  # noqa: E402
from axrisi.stream.eventlog import EventLog  # noqa: E402
from axrisi.stream.generation import Generation  # noqa: E402


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    with gevent.Timeout(seconds):
        while not condition():
            gevent.sleep(0.002)


def contents(frames: list[bytes]) -> str:
    return "".join(json.loads(f.split(b"data: ", 1)[1]).get("content", "") for f in frames)


def main(case: str, base_url: str, key: str) -> dict[str, Any]:
    provider = OpenAIProvider("sk-test", base_url, "m", 10)
    log = EventLog(1, max_events=5) if case == "pressed" else EventLog(1)
    cursor = log.follow(0) if case == "pressed" else None
    ended: list[Generation] = []
    generation = Generation(log, provider, Prompt("summarize", "S.", f"<text>{key}</text>", key),
                            0.3 if case == "silent" else 5.0, on_end=ended.append)
    seen: dict[str, Any] = {}
    generation.start()
    wait_until(lambda: generation.content_pieces >= 1 or not generation.running)
    gevent.sleep(0.01)
    seen["pumped"] = generation.running and generation.greenlet.dead
    if case == "cut":
        generation.interrupt("cancelled", "The stream was cancelled because its client left.")
        generation.interrupt("cancelled", "again")  # a second one changes nothing
    text = ""
    if cursor is not None:
        wait_until(lambda: log.next_seq - cursor.position >= 5)
        gevent.sleep(0.1)
        seen["held_at_cap"] = log.next_seq - cursor.position
        seen["handed_back"] = generation.running and not generation.greenlet.dead
        position = 0
        with gevent.Timeout(10):
            while not log.finished_at(position):
                frames = log.read(position)
                text += contents(frames)
                position += len(frames)
                log.advance(cursor, position)
                gevent.sleep(0.002)
    wait_until(lambda: bool(ended))
    gevent.sleep(0.05)
    frames = log.read(log.base)
    last = json.loads(frames[-1].split(b"data: ", 1)[1])
    seen.update(outcome=generation.outcome, error_kind=generation.error_kind,
                ends=len(ended), text=contents(frames), followed=text, last=last,
                pooled=provider.client._client._transport.idle_connections())
    return seen


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
