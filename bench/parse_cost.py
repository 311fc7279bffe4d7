"""What parsing an upstream chunk and framing its event cost per token, against copying the
content's JSON string into the frame as bytes (issue 23 item 3's idea, weighed before building).

One process, no I/O: ``_Reader.feed`` on an OpenAI chunk of one content token (the service's
parse: the SSE line, orjson, the delta), ``sse.event`` on the event the generation appends (the
framing: orjson), and the floor of a byte fast path (find the literal, format the frame). Each is
timed over ``--tokens`` calls; the figures are µs per token, to set beside the relay's whole CPU
per token (``run.py``'s ``turnover``).

    .venv/bin/python bench/parse_cost.py      # a few seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from axrisi.providers.openai_compat import _Reader  # noqa: E402
from axrisi.stream import sse  # noqa: E402

ROLE = (b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n')
CHUNK = (b'data: {"id":"chatcmpl-abc123","object":"chat.completion.chunk","created":1733580000,'
         b'"model":"gpt-4o-mini","system_fingerprint":"fp_x","choices":[{"index":0,"delta":'
         b'{"content":" world"},"logprobs":null,"finish_reason":null}]}\n\n')


def per_call(fn, count: int) -> float:
    """µs per call of ``fn(i)`` over ``count`` calls."""
    started = time.perf_counter()
    for index in range(count):
        fn(index)
    return (time.perf_counter() - started) / count * 1e6


def byte_copy(index: int) -> bytes:
    start = CHUNK.find(b'"content":"') + 11
    literal = CHUNK[start:CHUNK.find(b'"', start)]
    return b'id: abc-%d\ndata: {"content":"%s","commandId":"abc"}\n\n' % (index, literal)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    args = parser.parse_args()
    reader = _Reader("m")
    reader.feed(ROLE)
    parse = per_call(lambda _: reader.feed(CHUNK), args.tokens)
    frame = per_call(lambda i: sse.event(f"abc-{i}", {"content": " world", "commandId": "abc"},
                                         None), args.tokens)
    copy = per_call(byte_copy, args.tokens)
    print(f"parse (_Reader.feed) {parse:.2f} us, frame (sse.event) {frame:.2f} us: "
          f"{parse + frame:.2f} us per token; a byte copy into the frame: {copy:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
