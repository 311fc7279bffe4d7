"""An asyncio Server-Sent Events load generator: thousands of streams from one process.

Each stream is one TCP connection driven by an ``asyncio.Protocol`` (the event loop's raw
transport API: no aiohttp, no ``StreamReader`` buffering, no task per connection). It sends one
``POST`` with a bearer token, parses the HTTP/1.1 response head, decodes the chunked body
incrementally, splits it into SSE events on blank lines, and reads each ``data:`` line for the
upstream's send stamps (``t=<monotonic_ns>``, see ``bench/upstream.py``). For every stamp,
latency = the receive time of the bytes that carried it minus the stamp: relay latency end to
end, on one clock. Several stamps in one event (a relay that batches tokens) each count.

What it measures per stream: time to first byte (request start to the first response byte),
time to first token, tokens, latencies, an ``event: error`` if any, how the stream ended.

Scenarios (``--scenario``; the runner passes a JSON plan with ``--plan``):

* ``hold``: open streams at a slow token rate up to each plateau (``--plateaus 1000,5000,10000``),
  sample the server's process tree at each plateau, then check how many of the streams are still
  receiving tokens (held);
* ``steady``: ``--streams`` streams at ``--rate`` tokens/s each, started over ``--stagger``
  seconds; after ``--warmup`` a ``--window`` of latency and of server CPU (sampled from /proc);
* ``ramp``: ``steady`` steps with more and more streams (``--steps``) until p99 latency passes
  ``--p99-limit-ms`` or less than 90% of the offered tokens arrive;
* ``cancel``: ``--streams`` streams opened over ``--stagger`` seconds, each closed abruptly by
  the client, half after ``--close-after`` tokens and half before the first token (the upstream
  is told to stay silent); the close times go out by tag for the runner to match with the
  upstream's;
* ``closed_loop``: ``users`` closed-loop users (each with its own JWT from ``user_tokens``), each
  sending its next ``POST /api/run`` as soon as its previous answer ended: on a new connection,
  or with ``keepalive`` on the same one (a new one when the server closed it); answer sizes and
  rates fixed or drawn per user from a seeded generator; a ``window`` of CPU per token and per
  request, latency, time to first byte/token (the runner's ``turnover``, ``real``, ``requests``);
* ``held``: ``streams`` streams that each get a whole answer quickly and then stay open (the
  upstream's ``hold=``): memory of a stream whose events are kept for resume;
* ``stalled``: ``streams`` clients that read for ``read_for`` seconds and then stop reading
  while the upstream keeps sending big tokens (``pad=``); per stream, the time from the stall
  to the upstream seeing its connection closed (polled from the upstream's ``/_bench/closes``),
  and the worker's memory and the kernel's TCP memory before, at the peak, and after;
* ``soak``: ``streams`` long answers at ``rate`` tokens/s (1), opened at most ``open_rate`` a
  second, held ``hold`` seconds (the runner scrapes ``/metrics`` meanwhile); per stream, the
  longest time between two of its tokens received in the hold (the first token's wait is not a
  gap), and the seconds of the hold in which gaps over ``gap_ms`` ended.

With ``redis_port`` and ``redis_pid`` in the plan (a target that runs with ``REDIS_URL``), the
snapshots at a window's two edges also read that redis-server's ``INFO`` and its CPU from /proc,
so that what Redis itself spent is counted over exactly the window the tokens are counted in
(``redis`` in a ``steady`` or ``closed_loop`` result).

Output: one JSON document on stdout; progress on stderr. Every scenario has a hard deadline
(``--deadline``), after which everything is closed and the partial result printed.

Example (a running service on :8000 with JWT_SECRET_KEY=S, its upstream bench/upstream.py)::

    python bench/loadgen.py --port 8000 --secret S --scenario steady --streams 200 --rate 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import resource
import sys
import time
import urllib.request

import sample

_ns = time.monotonic_ns
_STAMP = re.compile(rb"t=(\d{6,20})")
_CODE = re.compile(rb'"code"\s*:\s*"([a-z_]+)"')

HEAD, BODY, DONE = 0, 1, 2


def log(message: str) -> None:
    sys.stderr.write(f"[loadgen {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def percentile(sorted_values: list, q: float):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize_ns(values: list[int]) -> dict:
    """p50/p90/p99/max in milliseconds of nanosecond samples."""
    s = sorted(values)
    out: dict = {"n": len(s)}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)):
        v = percentile(s, q)
        out[name + "_ms"] = None if v is None else round(v / 1e6, 3)
    out["max_ms"] = round(s[-1] / 1e6, 3) if s else None
    return out



def _filler(chars: int) -> str:
    """A page's worth of prose to put before every request's text (``text_chars`` in the plan).

    Before, not after: the bench upstream reads its ``key=value`` words from the end.
    """
    if chars <= 0:
        return ""
    sentence = " The quick brown fox reads a long page of text while the model writes."
    return (sentence * (chars // len(sentence) + 1))[:chars]

class Window:
    """Latency samples and token counts of tokens received while the window is open."""

    __slots__ = ("lat", "tokens")

    def __init__(self) -> None:
        self.lat: list[int] = []
        self.tokens = 0


class Gaps:
    """soak: per stream, the longest time between two consecutive tokens received in the hold
    ``[t0, t1]`` (a gap counts in the hold when its second token arrives in it), and per second
    of the hold (from ``t0``) the gaps over ``slow`` ns that ended in it: a pause of the relay
    shows as many streams' gaps ending in one second."""

    __slots__ = ("t0", "t1", "slow", "worse", "buckets")

    def __init__(self, slow_ms: float, worse_ms: float) -> None:
        self.t0 = self.t1 = 0  # 0: the hold has not begun
        self.slow, self.worse = int(slow_ms * 1e6), int(worse_ms * 1e6)
        self.buckets: dict[int, list[int]] = {}  # second -> [over slow, over worse, max ns]

    def token(self, client: Client, now: int) -> None:
        if self.t1 and now > self.t1:
            return
        prev, client.gap_last = client.gap_last, now
        if not self.t0 or now < self.t0 or not prev:
            return
        gap = now - prev
        if gap > client.max_gap:
            client.max_gap = gap
        if gap > self.slow:
            self.note(now, gap)

    def note(self, end: int, gap: int) -> None:
        bucket = self.buckets.setdefault((end - self.t0) // 1_000_000_000, [0, 0, 0])
        bucket[0] += 1
        bucket[1] += gap > self.worse
        bucket[2] = max(bucket[2], gap)


class Client(asyncio.Protocol):
    """One SSE stream over one connection."""

    __slots__ = (
        "gen", "tag", "request", "transport", "state", "head", "chunked", "left", "skip",
        "cbuf", "sbuf", "status", "t_start", "t_first", "t_token", "t_last", "t_close",
        "t_end", "tokens", "error", "code", "done", "complete", "closed", "close_after",
        "close_delay", "mode", "ended_by", "events", "t_done", "keepalive", "conn_close",
        "reused", "finished", "read_for", "t_pause", "gap_last", "max_gap",
    )

    def __init__(self, gen: LoadGen, tag: str, request: bytes) -> None:
        self.gen = gen
        self.tag = tag
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.state = HEAD
        self.head = b""
        self.chunked = False
        self.left = 0
        self.skip = 0
        self.cbuf = b""
        self.sbuf = b""
        self.status = 0
        self.t_start = 0
        self.t_first = 0
        self.t_token = 0
        self.t_last = 0
        self.t_close = 0
        self.t_end = 0
        self.tokens = 0
        self.error: str | None = None
        self.code: str | None = None
        self.done = False
        self.complete = False
        self.closed = False
        self.close_after: int | None = None
        self.close_delay: float | None = None
        self.mode = ""
        self.ended_by = ""
        self.events = 0  # SSE events that carried tokens (a relay may batch several in one)
        self.t_done = 0  # when the terminal chunk arrived
        self.keepalive = False  # keep the connection for the next request after the answer
        self.conn_close = False  # the server said "Connection: close"
        self.reused = False  # sent on a connection an earlier answer came on
        self.finished: asyncio.Future | None = None  # resolved at the answer's end or close
        self.read_for: float | None = None  # stop reading this long after the first byte
        self.t_pause = 0
        self.gap_last = 0  # soak: the last token's receive time up to the hold's end
        self.max_gap = 0  # soak: the longest wait between two tokens ending in the hold

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]
        if self.close_delay is not None:
            self.gen.loop.call_later(self.close_delay, self.abrupt_close)

    def data_received(self, data: bytes) -> None:
        now = _ns()
        if not self.t_first:
            self.t_first = now
            if self.read_for is not None:
                self.gen.loop.call_later(self.read_for, self.stall)
        if self.state == DONE:
            return
        if self.state == HEAD:
            data = self._head(data)
            if not data:
                return
        if self.chunked:
            self._chunked(data, now)
        else:
            self._sse(data, now)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.t_end = _ns()
        if not self.complete and not self.t_close:
            if self.reused and not self.t_first:
                # The server closed the kept-alive connection as the request went out: not an
                # answer that broke, a connection to open again (the user retries).
                self.ended_by = "keepalive_closed"
            else:
                self.ended_by = "server_closed" if exc is None else f"reset: {exc}"
                if self.error is None and not self.done:
                    self.error = "closed early"
        self.gen.on_closed(self)

    # parsing

    def _head(self, data: bytes) -> bytes:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self.head[:end], self.head[end + 4:]
        self.head = b""
        try:
            self.status = int(head[9:12])
        except ValueError:
            self.status = -1
        lower = head.lower()
        self.chunked = b"transfer-encoding: chunked" in lower
        self.conn_close = b"connection: close" in lower
        self.state = BODY
        if self.status != 200:
            self.error = f"http {self.status}"
            self.code = (m.group(1).decode() if (m := _CODE.search(rest)) else None)
            self.close()
            return b""
        return rest

    def _chunked(self, data: bytes, now: int) -> None:
        buf = self.cbuf + data if self.cbuf else data
        pos, n = 0, len(buf)
        out = []
        while pos < n:
            if self.skip:
                step = min(self.skip, n - pos)
                pos += step
                self.skip -= step
                continue
            if self.left:
                step = min(self.left, n - pos)
                out.append(buf[pos:pos + step])
                pos += step
                self.left -= step
                if not self.left:
                    self.skip = 2
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            try:
                size = int(buf[pos:nl].split(b";", 1)[0], 16)
            except ValueError:
                self.error = "bad chunk size"
                self.close()
                return
            pos = nl + 2
            if size == 0:
                self.complete = True
                self.state = DONE
                pos = n
                break
            self.left = size
        self.cbuf = buf[pos:] if pos < n else b""
        if out:
            self._sse(out[0] if len(out) == 1 else b"".join(out), now)
        if self.complete:
            self.t_done = now
            self.gen.on_complete(self)
            if not self.keepalive or self.conn_close:
                self.close()

    def _sse(self, data: bytes, now: int) -> None:
        buf = self.sbuf + data if self.sbuf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.sbuf = buf
            return
        self.sbuf = buf[end + 2:]
        tokens = 0
        for event in buf[:end].split(b"\n\n"):
            name = b""
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    stamps = _STAMP.findall(line)
                    if stamps:
                        tokens += len(stamps)
                        self.events += 1
                        self.gen.on_stamps(stamps, now)
                    elif b'"done"' in line or line.endswith(b"[DONE]"):
                        self.done = True
                    elif name == b"error" and self.error is None:
                        self.error = "error event"
                        m = _CODE.search(line)
                        self.code = m.group(1).decode() if m else None
                elif line.startswith(b"event:"):
                    name = line[6:].strip()
        if tokens:
            if not self.t_token:
                self.t_token = now
            if self.gen.gaps is not None:
                self.gen.gaps.token(self, now)
            self.t_last = now
            self.tokens += tokens
            if self.close_after is not None and self.tokens >= self.close_after:
                self.abrupt_close()

    # keep-alive, stalling

    def reusable(self) -> bool:
        """Whether the next request may go on this connection (its answer ended, it is open)."""
        return (self.complete and not self.closed and not self.conn_close
                and self.transport is not None and not self.transport.is_closing())

    def adopt(self, prev: Client) -> None:
        """Send this request on ``prev``'s kept-alive connection, as a browser would."""
        transport = prev.transport
        assert transport is not None
        prev.transport = None
        prev.closed = True
        self.gen.open_clients.discard(prev)
        self.reused = True
        self.t_start = _ns()
        self.gen.open_clients.add(self)
        transport.set_protocol(self)
        self.connection_made(transport)

    def stall(self) -> None:
        """The reader stops reading for good (a slow phone, a frozen tab): bytes pile up."""
        if self.closed or self.transport is None or self.complete:
            return
        self.t_pause = _ns()
        self.transport.pause_reading()

    def resolve(self) -> None:
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    # closing

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abrupt_close(self) -> None:
        """The client goes away mid-stream: note the time, close the socket."""
        if self.closed or self.complete or self.t_close:
            return
        self.t_close = _ns()
        self.ended_by = "client_closed"
        self.close()

    def summary(self) -> dict:
        return {
            "tag": self.tag, "status": self.status, "tokens": self.tokens,
            "ttfb_ms": (self.t_first - self.t_start) / 1e6 if self.t_first else None,
            "error": self.error, "code": self.code, "complete": self.complete,
        }


class LoadGen:
    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.host = plan.get("host", "127.0.0.1")
        self.port = int(plan["port"])
        self.kind = plan.get("kind", "service")
        self.token = plan.get("token", "")
        self.filler = _filler(int(plan.get("text_chars", 0)))
        self.run_id = plan.get("run_id") or f"{os.getpid():x}{random.randrange(1 << 16):04x}"
        self.window: Window | None = None
        self.tokens_total = 0
        self.clients: list[Client] = []
        self.open_clients: set[Client] = set()
        self.completed = 0
        self.lag: list[int] = []
        self.lag_recording = False
        self.sample_pid = plan.get("sample_pid")
        self.upstream_pid = plan.get("upstream_pid")
        # A redis-server the target uses (REDIS_URL): its INFO and CPU at the window's edges.
        self.redis_port = plan.get("redis_port")
        self.redis_pid = plan.get("redis_pid")
        self.connect_timeout = float(plan.get("connect_timeout", 60))
        self.connect_errors: dict[str, int] = {}
        self._waiters: list[tuple[asyncio.Future, object]] = []
        self._tasks: set[asyncio.Task] = set()
        self.settle_cores: float | None = None
        self.reconnects = 0
        self.gaps: Gaps | None = None

    # callbacks from clients

    def on_stamps(self, stamps: list[bytes], now: int) -> None:
        self.tokens_total += len(stamps)
        w = self.window
        if w is not None:
            w.tokens += len(stamps)
            lat = w.lat
            for s in stamps:
                lat.append(now - int(s))

    def on_complete(self, client: Client) -> None:
        self.completed += 1
        client.resolve()

    def on_closed(self, client: Client) -> None:
        self.open_clients.discard(client)
        client.resolve()
        self._check_waiters()

    def _check_waiters(self) -> None:
        if not self.open_clients and self._waiters:
            for fut, _ in self._waiters:
                if not fut.done():
                    fut.set_result(None)
            self._waiters.clear()

    async def wait_all_closed(self, timeout: float) -> bool:
        if not self.open_clients:
            return True
        fut = self.loop.create_future()
        self._waiters.append((fut, None))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False

    # requests

    def request(self, tag: str, rate: float, tokens: int, first: float = 0.0,
                token: str | None = None, extra: str = "") -> bytes:
        words = f"bench tag={tag} rate={rate:g} tokens={tokens} first={first:g} {extra}"
        host = f"{self.host}:{self.port}"
        if self.kind == "upstream":
            body = json.dumps({"model": "bench-model", "stream": True,
                               "messages": [{"role": "user", "content": words}]})
            path = "/v1/chat/completions"
        else:
            body = json.dumps({"command": "summarize", "title": "bench",
                               "text": f"{self.filler}The benchmark's text. {words}"})
            path = "/api/run"
        raw = body.encode()
        return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {token or self.token}\r\n"
                f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw

    def new_client(self, tag: str, rate: float, tokens: int, first: float = 0.0,
                   token: str | None = None, extra: str = "") -> Client:
        client = Client(self, tag, self.request(tag, rate, tokens, first, token, extra))
        self.clients.append(client)
        return client

    async def connect(self, client: Client) -> None:
        client.t_start = _ns()
        self.open_clients.add(client)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: client, self.host, self.port),
                self.connect_timeout)
        except (OSError, TimeoutError) as error:
            key = type(error).__name__ + (f" errno {error.errno}" if
                                          isinstance(error, OSError) and error.errno else "")
            self.connect_errors[key] = self.connect_errors.get(key, 0) + 1
            client.error = f"connect: {key}"
            client.closed = True
            client.t_end = _ns()
            self.on_closed(client)

    async def start_paced(self, clients: list[Client], seconds: float) -> None:
        """Start the clients spread evenly over ``seconds``."""
        if not clients:
            return
        t0 = self.loop.time()
        tasks = set()
        for i, client in enumerate(clients):
            due = t0 + seconds * i / len(clients)
            delay = due - self.loop.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
            task = self.loop.create_task(self.connect(client))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    # measurement helpers

    async def lag_monitor(self) -> None:
        """Event-loop lag: how late a 10 ms sleep wakes (a busy load generator inflates latency)."""
        period = 0.010
        while True:
            t = self.loop.time()
            await asyncio.sleep(period)
            if self.lag_recording:
                self.lag.append(int((self.loop.time() - t - period) * 1e9))

    def snap(self) -> dict:
        out: dict = {"t": time.monotonic(), "loadgen_cpu_s": _own_cpu(),
                     "system": sample.system_cpu()}
        if self.sample_pid:
            try:
                out["server"] = sample.snapshot(int(self.sample_pid))
            except OSError as error:
                out["server_error"] = str(error)
        if self.upstream_pid:
            try:
                out["upstream_cpu_s"] = sample.cpu_seconds(int(self.upstream_pid))
            except OSError:
                pass
        if self.redis_port:
            try:
                out["redis"] = sample.redis_info(int(self.redis_port))
                out["redis_cpu_s"] = sample.cpu_seconds(int(self.redis_pid))
            except (OSError, TypeError, ValueError) as error:
                out["redis_error"] = str(error)
        return out

    async def settle_server(self, below_cores: float, max_wait: float) -> float:
        """Wait until the server's tree uses less than ``below_cores``; the seconds waited."""
        if not self.sample_pid:
            return 0.0
        t0 = time.monotonic()

        def tree_cpu() -> float:
            total = 0.0
            for pid in sample.tree(int(self.sample_pid)):
                try:
                    total += sample.cpu_seconds(pid)
                except OSError:
                    pass
            return total

        while time.monotonic() - t0 < max_wait:
            c0, w0 = tree_cpu(), time.monotonic()
            await asyncio.sleep(1.0)
            self.settle_cores = (tree_cpu() - c0) / (time.monotonic() - w0)
            if self.settle_cores < below_cores:
                break
        return time.monotonic() - t0

    def close_all(self) -> None:
        for client in list(self.open_clients):
            if client.transport is not None:
                client.abrupt_close()
                if client.transport is not None:
                    client.transport.abort()

    # scenarios

    async def steady_step(self, streams: int, rate: float, stagger: float, warmup: float,
                          window_s: float, label: str, tail: float = 0.5) -> dict:
        tokens = math.ceil(rate * (stagger + warmup + window_s + tail))
        clients = [self.new_client(f"{self.run_id}-{label}-{i}", rate, tokens)
                   for i in range(streams)]
        first_index = len(self.clients) - streams
        starter = self.loop.create_task(self.start_paced(clients, stagger))
        await asyncio.sleep(stagger + warmup)
        before = self.snap()
        self.window = Window()
        self.lag = []
        self.lag_recording = True
        await asyncio.sleep(window_s)
        window, self.window = self.window, None
        self.lag_recording = False
        after = self.snap()
        lag = sorted(self.lag)
        await starter
        finished = await self.wait_all_closed(max(10.0, tokens / rate + 10.0))
        if not finished:
            self.close_all()
            await self.wait_all_closed(5.0)
        mine = self.clients[first_index:]
        elapsed = after["t"] - before["t"]
        result = {
            "streams": streams, "rate": rate, "tokens_per_stream": tokens,
            "offered_tps": streams * rate, "window_s": elapsed,
            "tokens_in_window": window.tokens,
            "delivered_tps": window.tokens / elapsed if elapsed > 0 else None,
            "latency": summarize_ns(window.lat),
            "loop_lag": summarize_ns(lag),
            "all_finished": finished,
            **_streams_summary(mine),
            "cpu": _cpu_delta(before, after, self.plan.get("server_cpu")),
            "redis": redis_window(before, after, window.tokens),
        }
        if result["cpu"].get("server_cpu_s") is not None and window.tokens:
            result["server_cpu_us_per_token"] = \
                result["cpu"]["server_cpu_s"] / window.tokens * 1e6
        result["disturbed"] = disturbed(result)
        return result

    async def scenario_steady(self) -> dict:
        p = self.plan
        return await self.steady_step(int(p.get("streams", 200)), float(p.get("rate", 50)),
                                       float(p.get("stagger", 2)), float(p.get("warmup", 2)),
                                       float(p.get("window", 10)), "steady")

    async def scenario_ramp(self) -> dict:
        p = self.plan
        limit_ms = float(p.get("p99_limit_ms", 100))
        steps = []
        best = None
        for i, streams in enumerate(p.get("steps", [50, 100, 200, 400])):
            retries = int(p.get("retries", 2))
            attempts = []
            for attempt in range(retries + 1):
                log(f"ramp step {i}: {streams} streams x {p.get('rate', 50)} tokens/s"
                    + (f" (retry {attempt}: {attempts[-1]['disturbed']})" if attempt else ""))
                # Start the streams no faster than start_rate per second, so that the step
                # measures relaying, not a burst of stream set-ups.
                stagger = max(float(p.get("stagger", 1)),
                              int(streams) / float(p.get("start_rate", 100)))
                step = await self.steady_step(int(streams), float(p.get("rate", 50)),
                                              stagger,
                                              float(p.get("warmup", 2)),
                                              float(p.get("window", 5)), f"ramp{i}.{attempt}")
                attempts.append(step)
                if _step_ok(step, limit_ms) or not step["disturbed"]:
                    break
                await asyncio.sleep(float(p.get("pause", 1)))
            step = min(attempts, key=lambda a: (not _step_ok(a, limit_ms), bool(a["disturbed"])))
            step["attempts"] = len(attempts)
            p99 = step["latency"]["p99_ms"]
            delivered = step["delivered_tps"] or 0
            step["ok"] = _step_ok(step, limit_ms)
            steps.append(step)
            log(f"  delivered {delivered:.0f} tokens/s, p99 {p99} ms, ok={step['ok']}")
            if step["ok"]:
                if best is None or delivered > best["delivered_tps"]:
                    best = step
            else:
                break
            await asyncio.sleep(float(p.get("pause", 1)))
        return {"steps": steps, "p99_limit_ms": limit_ms,
                "max_tps": best["delivered_tps"] if best else 0,
                "max_tps_step": steps.index(best) if best else None}

    async def scenario_hold(self) -> dict:
        p = self.plan
        rate = float(p.get("rate", 0.2))
        open_rate = float(p.get("open_rate", 500))
        settle = float(p.get("settle", 3))
        plateau_timeout = float(p.get("plateau_timeout", 30))
        check = float(p.get("check_window", 1.0 / rate + 1.5))
        tokens = int(p.get("tokens", 10_000))
        self.connect_timeout = plateau_timeout
        plateaus = []
        idle = self.snap()
        max_inflight = int(p.get("max_inflight", 200))
        inflight_age = float(p.get("inflight_age", 1.0))
        for target in p.get("plateaus", [1000, 5000, 10000]):
            n = target - len(self.clients)
            label = f"hold{target}"
            log(f"hold: opening {n} more streams (to {target}), at most {open_rate:.0f}/s and "
                f"{max_inflight} awaiting their first byte")
            t_open = time.monotonic()
            deadline = t_open + plateau_timeout
            fresh = []
            for i in range(n):
                # Closed loop: no more than max_inflight requests younger than inflight_age
                # without an answer, so that the target's pace (not the listen backlog) sets
                # the ramp; a request stuck longer (a pool that is full) stops counting.
                while time.monotonic() < deadline:
                    cutoff = _ns() - int(inflight_age * 1e9)
                    inflight = sum(1 for c in fresh[-max_inflight * 4:]
                                   if not c.t_first and not c.closed and c.t_start > cutoff)
                    if inflight < max_inflight:
                        break
                    await asyncio.sleep(0.01)
                if time.monotonic() >= deadline:
                    log(f"  plateau timeout after {len(fresh)} of {n} streams")
                    break
                client = self.new_client(f"{self.run_id}-{label}-{i}", rate, tokens)
                fresh.append(client)
                task = self.loop.create_task(self.connect(client))
                task.add_done_callback(self._tasks.discard)
                self._tasks.add(task)
                await asyncio.sleep(1.0 / open_rate)
            answer_by = min(deadline, time.monotonic() + float(p.get("answer_wait", 15)))
            while time.monotonic() < answer_by:
                if not any(not c.t_first and not c.closed for c in fresh):
                    break
                await asyncio.sleep(0.2)
            ramp_s = time.monotonic() - t_open
            await asyncio.sleep(settle)
            # A target still busy setting streams up is not yet holding them: wait (bounded)
            # until its CPU use falls under settle_cpu cores, then check who receives tokens.
            settle_s = await self.settle_server(float(p.get("settle_cpu", 0.9)),
                                                float(p.get("settle_max", 30)))
            mark = _ns()
            await asyncio.sleep(check)
            snap = self.snap()
            receiving = sum(1 for c in self.clients
                            if not c.closed and c.error is None and c.t_last >= mark)
            answered = sum(1 for c in self.clients if c.status == 200)
            plateau = {
                "requested": target, "opened": len(self.clients), "settle_s": settle_s,
                "server_cores_at_check": self.settle_cores,
                "open": len(self.open_clients), "answered_200": answered,
                "receiving": receiving, "ramp_s": ramp_s, "snapshot": snap,
                "errors": _count(c.error or "" for c in self.clients if c.error),
                "codes": _count(c.code or "" for c in self.clients if c.code),
                "connect_errors": dict(self.connect_errors),
            }
            plateaus.append(plateau)
            server = snap.get("server", {})
            log(f"  plateau {target}: open {plateau['open']}, receiving {receiving}, "
                f"PSS {server.get('pss_kb', 0) / 1024:.1f} MiB")
        handoff = await self.hand_off(plateaus[-1] if plateaus else {})
        self.close_all()
        await self.wait_all_closed(10)
        await asyncio.sleep(settle)
        after = self.snap()
        return {"idle": idle, "plateaus": plateaus, "after_close": after, "rate": rate,
                "check_window_s": check, "handoff": handoff, "ttfb": summarize_ns(
                    [c.t_first - c.t_start for c in self.clients if c.t_first])}

    async def hand_off(self, plateau: dict) -> dict | None:
        """With ``ready_file`` in the plan (the runner's ``scrape``): keep the streams open
        after the last plateau, write the plateau's counts to ``ready_file``, and wait until
        ``release_file`` exists (at most ``linger`` seconds) while the runner measures; then
        say how many streams still received tokens meanwhile."""
        p = self.plan
        ready = p.get("ready_file")
        if not ready:
            return None
        mark, t0 = _ns(), time.monotonic()
        counts = {k: plateau.get(k) for k in ("requested", "opened", "open", "answered_200",
                                              "receiving", "errors", "connect_errors")}
        with open(ready + ".tmp", "w") as f:
            json.dump(counts, f)
        os.replace(ready + ".tmp", ready)
        release, linger = p.get("release_file"), float(p.get("linger", 120))
        while time.monotonic() - t0 < linger and not (release and os.path.exists(release)):
            await asyncio.sleep(0.1)
        return {"held_s": time.monotonic() - t0, "released": bool(release and
                                                                 os.path.exists(release)),
                "open": len(self.open_clients),
                "receiving": sum(1 for c in self.clients
                                 if not c.closed and c.error is None and c.t_last >= mark),
                "errors": _count(c.error or "" for c in self.clients if c.error)}

    async def scenario_cancel(self) -> dict:
        p = self.plan
        n = int(p.get("streams", 1000))
        stagger = float(p.get("stagger", 5))
        rate = float(p.get("rate", 20))
        close_after = int(p.get("close_after", 3))
        silent_first = float(p.get("silent_first", 120))
        tokens = int(p.get("tokens", 2000))
        rng = random.Random(7)
        clients = []
        for i in range(n):
            if i % 2 == 0:
                client = self.new_client(f"{self.run_id}-mid-{i}", rate, tokens)
                client.close_after = close_after
                client.mode = "mid"
            else:
                client = self.new_client(f"{self.run_id}-silent-{i}", rate, tokens,
                                         first=silent_first)
                client.close_delay = rng.uniform(0.1, 0.5)
                client.mode = "silent"
            clients.append(client)
        before = self.snap()
        await self.start_paced(clients, stagger)
        finished = await self.wait_all_closed(float(p.get("close_timeout", 30)))
        if not finished:
            log(f"cancel: {len(self.open_clients)} streams never reached their close point")
            self.close_all()
            await self.wait_all_closed(5)
        return {
            "before": before,
            "closes": {c.tag: c.t_close for c in clients if c.t_close},
            "modes": {c.tag: c.mode for c in clients},
            "not_closed_by_client": [c.tag for c in clients if not c.t_close],
            "all_reached_close_point": finished,
            **_streams_summary(clients),
        }

    # closed-loop users: turnover, real, requests

    def shapes(self, users: int):
        """Each user's answer sizes and rates: fixed, or drawn from ``[low, high]`` by a
        generator seeded per user, so that every target gets the same sequence per user
        whatever the timing (a faster target only goes further along it)."""
        p = self.plan
        tokens, rate = p.get("tokens", 200), p.get("rate", 50)
        rngs = [random.Random(f"{p.get('seed', 1)}-{u}") for u in range(users)]

        def shape(u: int) -> tuple[int, float]:
            rng = rngs[u]
            n = rng.randint(*tokens) if isinstance(tokens, list) else int(tokens)
            r = round(rng.uniform(*rate), 1) if isinstance(rate, list) else float(rate)
            return n, r
        return shape

    async def user(self, u: int, token: str, shape, delay: float, stop_at: float,
                   keepalive: bool) -> None:
        """One closed-loop user: a stream, and the next one as soon as it ends, until
        ``stop_at``. With ``keepalive`` the next request goes on the same connection; when the
        server closed it (or said it would), on a new one, and a request that a closing
        connection swallowed is sent again."""
        await asyncio.sleep(delay)
        prev: Client | None = None
        n = 0
        while self.loop.time() < stop_at:
            tokens, rate = shape(u)
            while True:
                client = self.new_client(f"{self.run_id}-u{u}-{n}", rate, tokens, token=token)
                client.keepalive = keepalive
                client.finished = self.loop.create_future()
                if prev is not None and prev.reusable():
                    client.adopt(prev)
                else:
                    await self.connect(client)
                await client.finished
                prev = client
                if client.ended_by != "keepalive_closed":
                    break
                self.reconnects += 1
            if client.error:
                await asyncio.sleep(0.1)  # a refusing target is not hammered in a tight loop
            n += 1
        if prev is not None:
            prev.close()

    async def scenario_closed_loop(self) -> dict:
        p = self.plan
        users = int(p.get("users", 200))
        stagger, warmup = float(p.get("stagger", 4)), float(p.get("warmup", 5))
        window_s = float(p.get("window", 15))
        keys = p.get("user_tokens") or [self.token]
        shape = self.shapes(users)
        stop_at = self.loop.time() + stagger + warmup + window_s
        self.reconnects = 0
        tasks = [self.loop.create_task(self.user(u, keys[u % len(keys)], shape,
                                                 stagger * u / users, stop_at,
                                                 bool(p.get("keepalive"))))
                 for u in range(users)]
        await asyncio.sleep(stagger + warmup)
        before, w0 = self.snap(), _ns()
        self.window, self.lag, self.lag_recording = Window(), [], True
        await asyncio.sleep(window_s)
        window, self.window, self.lag_recording = self.window, None, False
        w1, after = _ns(), self.snap()
        # No new stream starts after the window; the ones under way end (bounded: a target
        # that queues new requests for seconds before their first byte gets that much more).
        longest = max(self.plan_max("tokens") / self.plan_min("rate"), 1.0) + 30.0
        _, pending = await asyncio.wait(tasks, timeout=longest)
        if pending:
            self.close_all()
            await asyncio.wait(pending, timeout=5)
        result = self.window_figures(before, after, window, w0, w1)
        result.update(users=users, all_finished=not pending, reconnects=self.reconnects,
                      keepalive=bool(p.get("keepalive")))
        result["disturbed"] = disturbed(result)
        return result

    def plan_max(self, key: str) -> float:
        v = self.plan.get(key, 1)
        return float(max(v) if isinstance(v, list) else v)

    def plan_min(self, key: str) -> float:
        v = self.plan.get(key, 1)
        return float(min(v) if isinstance(v, list) else v)

    def window_figures(self, before: dict, after: dict, window: Window, w0: int,
                       w1: int) -> dict:
        """What one window of closed-loop users measured (see bench/README.md)."""
        clients = [c for c in self.clients if c.ended_by != "keepalive_closed"]
        started = [c for c in clients if w0 <= c.t_start < w1]
        done = [c for c in clients if c.complete and w0 <= c.t_done < w1]
        elapsed = after["t"] - before["t"]
        cpu = _cpu_delta(before, after, self.plan.get("server_cpu"))
        mean_tokens = sum(c.tokens for c in done) / len(done) if done else None
        events = sum(c.events for c in done)
        out = {
            "window_s": elapsed, "tokens_in_window": window.tokens,
            "delivered_tps": window.tokens / elapsed if elapsed > 0 else None,
            "latency": summarize_ns(window.lat), "loop_lag": summarize_ns(sorted(self.lag)),
            "started_in_window": len(started), "completed_in_window": len(done),
            "reused_connection_in_window": sum(1 for c in started if c.reused),
            "requests_per_s": len(done) / elapsed if elapsed > 0 else None,
            "request_ms": summarize_ns([c.t_done - c.t_start for c in done]),
            "ttfb": summarize_ns([c.t_first - c.t_start for c in started if c.t_first]),
            "ttft": summarize_ns([c.t_token - c.t_start for c in started if c.t_token]),
            "mean_tokens_per_request": mean_tokens,
            "tokens_per_event": sum(c.tokens for c in done) / events if events else None,
            "server_pss_kb": _get_in(after, "server", "pss_kb"),
            "cpu": cpu, "run": _streams_summary(clients),
            "redis": redis_window(before, after, window.tokens),
        }
        out["errors"] = out["run"]["errors"]
        cpu_s = cpu.get("server_cpu_s")
        if cpu_s is not None and window.tokens:
            out["server_cpu_us_per_token"] = cpu_s / window.tokens * 1e6
            if mean_tokens:
                out["server_cpu_ms_per_request_equiv"] = \
                    out["server_cpu_us_per_token"] * mean_tokens / 1e3
        if cpu_s is not None and done:
            out["server_cpu_ms_per_request"] = cpu_s / len(done) * 1e3
        return out

    # a stream that holds its answer

    async def scenario_held(self) -> dict:
        p = self.plan
        n, tokens = int(p.get("streams", 2000)), int(p.get("tokens", 500))
        rate, hold = float(p.get("rate", 100)), float(p.get("hold", 900))
        idle = self.snap()
        clients = [self.new_client(f"{self.run_id}-held-{i}", rate, tokens,
                                   extra=f"hold={hold:g}") for i in range(n)]
        t0 = time.monotonic()
        opened = await self.open_answering(clients, tokens, int(p.get("answering", 60)),
                                           float(p.get("answer_age", 30)),
                                           float(p.get("open_timeout", 150)))
        opened_s = time.monotonic() - t0
        answer_by = time.monotonic() + float(p.get("answer_wait", 20))
        while time.monotonic() < answer_by and any(
                c.tokens < tokens and not c.closed for c in clients[:opened]):
            await asyncio.sleep(0.2)
        answered_s = time.monotonic() - t0
        await asyncio.sleep(float(p.get("settle", 3)))
        settle_s = await self.settle_server(0.9, float(p.get("settle_max", 20)))
        snap = self.snap()
        open_ = [c for c in clients[:opened] if not c.closed]
        whole = [c for c in open_ if c.tokens >= tokens and c.error is None]
        events = sum(c.events for c in whole)
        result = {
            "idle": idle, "snapshot": snap, "requested": n, "opened": opened, "open": len(open_),
            "whole_answer": len(whole), "open_s": opened_s, "answered_s": answered_s,
            "settle_s": settle_s, "server_cores_at_check": self.settle_cores,
            "tokens_per_stream": tokens, "rate": rate,
            "tokens_per_event": sum(c.tokens for c in whole) / events if events else None,
            "errors": _count(c.error for c in clients if c.error),
            "codes": _count(c.code for c in clients if c.code),
            "connect_errors": dict(self.connect_errors),
        }
        pss, idle_pss = _get_in(snap, "server", "pss_kb"), _get_in(idle, "server", "pss_kb")
        if pss is not None and idle_pss is not None and open_:
            result["pss_growth_kb_per_stream"] = (pss - idle_pss) / len(open_)
        self.close_all()
        await self.wait_all_closed(10)
        return result

    async def open_answering(self, clients: list[Client], tokens: int, answering: int,
                             age: float, timeout: float) -> int:
        """Open the clients one by one, no more than ``answering`` of them receiving their
        answer at once, so that the relay reads each token on its own (one event per token, as
        at a model's pace) instead of batching an overload; a stream younger than ``age``
        without its whole answer counts as receiving. How many were opened by ``timeout``."""
        deadline = time.monotonic() + timeout
        live: list[Client] = []
        for i, client in enumerate(clients):
            while True:
                cutoff = _ns() - int(age * 1e9)
                live = [c for c in live if c.tokens < tokens and not c.closed
                        and (not c.t_start or c.t_start > cutoff)]  # 0: connecting
                if len(live) < answering or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.02)
            if time.monotonic() >= deadline:
                log(f"held: open timeout after {i} of {len(clients)} streams")
                return i
            live.append(client)
            task = self.loop.create_task(self.connect(client))
            task.add_done_callback(self._tasks.discard)
            self._tasks.add(task)
        return len(clients)

    # readers slower than the model

    async def scenario_stalled(self) -> dict:
        p = self.plan
        n, rate, pad = int(p.get("streams", 200)), float(p.get("rate", 40)), int(p.get("pad", 1000))
        read_for, stagger = float(p.get("read_for", 1)), float(p.get("stagger", 2))
        limit = float(p.get("drop_deadline", 60))
        tokens = int(rate * (stagger + read_for + limit + 30))  # still sending at the deadline
        before = self.memory_snap()
        clients = [self.new_client(f"{self.run_id}-stall-{i}", rate, tokens, extra=f"pad={pad}")
                   for i in range(n)]
        for c in clients:
            c.read_for = read_for
        await self.start_paced(clients, stagger)
        peak, closes = await self.watch_drops(clients, stagger + read_for + 10, limit, before)
        drops, never = [], 0
        for c in clients:
            if not c.t_pause:
                continue
            t_up = closes.get(c.tag)
            if t_up is None or t_up - c.t_pause > limit * 1e9:
                never += 1
            else:
                drops.append(t_up - c.t_pause)
        self.close_all()  # the readers go away for good
        await self.wait_all_closed(10)
        await asyncio.sleep(float(p.get("after", 5)))
        after = self.memory_snap()
        return {
            "streams": n, "rate": rate, "pad": pad, "pad_bytes_per_s": rate * pad,
            "stalled": sum(1 for c in clients if c.t_pause), "drop_deadline_s": limit,
            "drop_ms": summarize_ns(drops), "never_dropped": never,
            "before": before, "peak": peak, "after": after,
            "errors": _count(c.error for c in clients if c.error and not c.t_close),
            "codes": _count(c.code for c in clients if c.code),
        }

    async def watch_drops(self, clients: list[Client], pause_wait: float, limit: float,
                          first: dict) -> tuple[dict, dict]:
        """Sample memory each second until every stalled stream's upstream connection closed,
        or ``limit`` seconds after the last stall; the peak figures and the upstream's closes."""
        keys = ("worker_pss_kb", "tree_pss_kb", "tcp_mem_kb")
        peak = {key: first.get(key) for key in keys}
        closes: dict = {}
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            snap = self.memory_snap()
            for key in keys:  # each figure's own highest sample
                if (snap.get(key) or 0) > (peak.get(key) or 0):
                    peak[key] = snap[key]
            closes = await self.upstream_closes()
            stalled = [c for c in clients if c.t_pause]
            waiting = [c for c in clients if not c.t_pause and not c.closed]
            if waiting and time.monotonic() - t0 < pause_wait:
                continue
            if all(c.tag in closes for c in stalled):
                return peak, closes
            last = max((c.t_pause for c in stalled), default=_ns())
            if _ns() - last > limit * 1e9:
                return peak, closes

    def memory_snap(self) -> dict:
        """The worker's PSS and the kernel's TCP memory (/proc/net/sockstat), now."""
        snap = self.snap()
        root = int(self.sample_pid) if self.sample_pid else 0
        worker = sample.worker_of(snap["server"], root) if "server" in snap else None
        return {"t": snap["t"], "worker_pid": worker.get("pid") if worker else None,
                "worker_pss_kb": worker.get("pss_kb") if worker else None,
                "tree_pss_kb": _get_in(snap, "server", "pss_kb"),
                "tcp_mem_kb": sample.tcp_mem_kb()}

    async def upstream_closes(self) -> dict:
        """The upstream's close records by tag (``GET /_bench/closes``), or {} if unreachable."""
        port = self.plan.get("upstream_port")
        if not port:
            return {}
        url = f"http://{self.host}:{port}/_bench/closes"

        def fetch() -> dict:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read()).get("closes", {})
        try:
            return await self.loop.run_in_executor(None, fetch)
        except (OSError, ValueError):
            return {}

    # long streams held with scrapes running

    async def scenario_soak(self) -> dict:
        """``streams`` long answers at ``rate`` tokens/s, held ``hold`` s: the gaps between
        each stream's tokens. With ``ready_file`` (the runner) the hold's start is written there
        (``t0_ns``, on the shared monotonic clock) and the streams stay open after the hold
        until ``release_file`` exists (at most ``linger`` s), so that the runner's last scrape
        sees them; the gaps count up to ``t0 + hold`` only."""
        p = self.plan
        n, rate = int(p.get("streams", 2000)), float(p.get("rate", 1))
        open_rate, hold = float(p.get("open_rate", 200)), float(p.get("hold", 300))
        open_timeout = float(p.get("open_timeout", 60))
        answer_wait = float(p.get("answer_wait", 15))
        settle, linger = float(p.get("settle", 3)), float(p.get("linger", 60))
        # Long enough to last the slowest ramp, the hold and the linger after it.
        tokens = int(p.get("tokens") or math.ceil(
            rate * (open_timeout + answer_wait + settle + hold + linger + 30)))
        gaps = self.gaps = Gaps(float(p.get("gap_ms", 1500)), float(p.get("worse_gap_ms", 2000)))
        self.connect_timeout = open_timeout
        idle = self.snap()
        clients = [self.new_client(f"{self.run_id}-soak-{i}", rate, tokens) for i in range(n)]
        log(f"soak: opening {n} streams at {rate:g} tokens/s ({tokens} tokens each), at most "
            f"{open_rate:g}/s")
        t_open = time.monotonic()
        opened = 0
        for client in clients:
            if time.monotonic() - t_open > open_timeout:
                log(f"soak: open timeout after {opened} of {n} streams")
                break
            task = self.loop.create_task(self.connect(client))
            task.add_done_callback(self._tasks.discard)
            self._tasks.add(task)
            opened += 1
            await asyncio.sleep(1.0 / open_rate)
        open_s = time.monotonic() - t_open
        answer_by = time.monotonic() + answer_wait
        while time.monotonic() < answer_by and any(
                not c.t_token and not c.closed for c in clients[:opened]):
            await asyncio.sleep(0.2)
        await asyncio.sleep(settle)
        t0 = _ns()
        gaps.t0, gaps.t1 = t0, t0 + int(hold * 1e9)
        before = self.snap()
        self.window, self.lag, self.lag_recording = Window(), [], True
        ready = {"t0_ns": t0, "requested": n, "opened": opened, "open_s": open_s,
                 "open": len(self.open_clients),
                 "receiving": sum(1 for c in clients if c.t_token and not c.closed),
                 "errors": _count(c.error for c in clients if c.error),
                 "connect_errors": dict(self.connect_errors)}
        if p.get("ready_file"):
            with open(p["ready_file"] + ".tmp", "w") as f:
                json.dump(ready, f)
            os.replace(p["ready_file"] + ".tmp", p["ready_file"])
        log(f"soak: holding {ready['receiving']} receiving streams for {hold:g} s")
        late: dict[int, float] = {}  # second of the hold -> how late a 0.1 s sleep woke (ms)
        while _ns() < gaps.t1:
            t = _ns()
            await asyncio.sleep(min(0.1, max(0.0, (gaps.t1 - t) / 1e9)))
            lag_ms = (_ns() - t) / 1e6 - 100
            if lag_ms > 100:
                second = (t - t0) // 1_000_000_000
                late[second] = max(late.get(second, 0.0), round(lag_ms, 1))
        window, self.window, self.lag_recording = self.window, None, False
        after = self.snap()
        result = self.soak_figures(clients[:opened], gaps, window)
        result.update(at_hold_start=ready, t0_ns=t0, requested=n, opened=opened, open_s=open_s,
                      rate=rate, tokens_per_stream=tokens, hold_s=hold,
                      idle=idle, loop_lag=summarize_ns(sorted(self.lag)),
                      loadgen_late_seconds={str(k): v for k, v in sorted(late.items())},
                      cpu=_cpu_delta(before, after, p.get("server_cpu")),
                      server_pss_kb={"start": _get_in(before, "server", "pss_kb"),
                                     "end": _get_in(after, "server", "pss_kb")})
        result["disturbed"] = disturbed(result)
        release, t_end = p.get("release_file"), time.monotonic() + linger
        while release and not os.path.exists(release) and time.monotonic() < t_end:
            await asyncio.sleep(0.1)
        self.close_all()
        await self.wait_all_closed(10)
        return result

    def soak_figures(self, clients: list[Client], gaps: Gaps, window: Window) -> dict:
        """What the hold measured: each stream's longest gap (a stream still open at the end
        counts the wait since its last token too), who ended early, the relay latency."""
        t0, t1 = gaps.t0, gaps.t1
        measured, waiting_at_end = [], 0
        early = {"never_answered": 0, "no_token_before_hold": 0, "ended_before_hold": 0,
                 "ended_in_hold": 0, "answer_ended_in_hold": 0, "no_token_in_hold": 0}
        for c in clients:
            if c.status != 200:
                early["never_answered"] += 1
                continue
            if c.closed and c.t_end <= t0:
                early["ended_before_hold"] += 1
                continue
            if not c.t_token or c.t_token > t0:
                early["no_token_before_hold"] += 1
            if c.closed and c.t_end <= t1:
                early["ended_in_hold"] += 1
                early["answer_ended_in_hold"] += c.complete
            elif c.gap_last:
                tail = t1 - c.gap_last  # still waiting for its next token when the hold ended
                if tail > c.max_gap:
                    c.max_gap = tail
                if tail > gaps.slow:
                    waiting_at_end += 1
            if not c.gap_last or c.gap_last < t0:
                early["no_token_in_hold"] += 1
            if c.t_token:
                measured.append(c.max_gap)
        dist = summarize_ns(measured)
        return {
            "streams_measured": len(measured), "max_gap": dist,
            "streams_gap_over_slow": sum(1 for g in measured if g > gaps.slow),
            "streams_gap_over_worse": sum(1 for g in measured if g > gaps.worse),
            "slow_ms": gaps.slow / 1e6, "worse_ms": gaps.worse / 1e6,
            "gap_seconds": {str(k): {"over_slow": v[0], "over_worse": v[1],
                                     "max_ms": round(v[2] / 1e6, 1)}
                            for k, v in sorted(gaps.buckets.items())},
            "waiting_at_end_over_slow": waiting_at_end, "early": early,
            "tokens_in_hold": window.tokens, "latency": summarize_ns(window.lat),
            "errors": _count(c.error for c in clients if c.error),
            "codes": _count(c.code for c in clients if c.code),
            "connect_errors": dict(self.connect_errors),
        }

    async def run(self) -> dict:
        scenario = self.plan.get("scenario", "steady")
        runner = {"steady": self.scenario_steady, "ramp": self.scenario_ramp,
                  "hold": self.scenario_hold, "cancel": self.scenario_cancel,
                  "closed_loop": self.scenario_closed_loop, "held": self.scenario_held,
                  "stalled": self.scenario_stalled, "soak": self.scenario_soak}[scenario]
        monitor = self.loop.create_task(self.lag_monitor())
        t0 = time.monotonic()
        try:
            result = await asyncio.wait_for(runner(), float(self.plan.get("deadline", 300)))
            result["timed_out"] = False
        except TimeoutError:
            log("deadline reached: closing everything")
            self.close_all()
            result = {"timed_out": True, **_streams_summary(self.clients)}
        finally:
            monitor.cancel()
        self.close_all()
        result.update(scenario=scenario, kind=self.kind, elapsed_s=time.monotonic() - t0,
                      tokens_total=self.tokens_total, loadgen_cpu_s=_own_cpu())
        return result


def _step_ok(step: dict, limit_ms: float) -> bool:
    """A ramp step passes: p99 within the limit, 90% of the offered tokens delivered, no error."""
    p99 = step["latency"]["p99_ms"]
    delivered = step["delivered_tps"] or 0
    return (p99 is not None and p99 <= limit_ms and delivered >= 0.9 * step["offered_tps"]
            and not step["errors"])


def _get_in(d: dict, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _streams_summary(clients: list[Client]) -> dict:
    ttfb = [c.t_first - c.t_start for c in clients if c.t_first]
    ttft = [c.t_token - c.t_start for c in clients if c.t_token]
    return {
        "started": len(clients),
        "completed": sum(1 for c in clients if c.complete),
        "errors": _count(c.error for c in clients if c.error and not c.t_close),
        "codes": _count(c.code for c in clients if c.code),
        "ttfb": summarize_ns(ttfb),
        "ttft": summarize_ns(ttft),
        "tokens": sum(c.tokens for c in clients),
    }


def _cpu_delta(before: dict, after: dict, server_cpu: int | None = None) -> dict:
    out: dict = {"loadgen_cpu_s": after["loadgen_cpu_s"] - before["loadgen_cpu_s"]}
    if "server" in before and "server" in after:
        out["server_cpu_s"] = after["server"]["cpu_s"] - before["server"]["cpu_s"]
        out["server_pss_kb"] = after["server"]["pss_kb"]
    for key in ("upstream_cpu_s", "redis_cpu_s"):  # the harness's own, not the machine's noise
        if key in before and key in after:
            out[key] = after[key] - before[key]
    elapsed = after["t"] - before["t"]
    sys_b, sys_a = before.get("system", {}), after.get("system", {})
    if "cpu" in sys_b and "cpu" in sys_a:
        ours = sum(v for k, v in out.items() if k.endswith("cpu_s"))
        out["foreign_cpu_s"] = max(0.0, sys_a["cpu"] - sys_b["cpu"] - ours)
        out["steal_s"] = sys_a.get("steal", 0) - sys_b.get("steal", 0)
        if server_cpu is not None and f"cpu{server_cpu}" in sys_a:
            busy = sys_a[f"cpu{server_cpu}"] - sys_b[f"cpu{server_cpu}"]
            out["foreign_on_server_cpu_s"] = max(0.0, busy - out.get("server_cpu_s", 0.0))
    if elapsed > 0:
        for key in list(out):
            if key.endswith("_s"):
                out[key[:-2] + "_util"] = out[key] / elapsed
    return out


SCRIPT_COMMANDS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


def redis_window(before: dict, after: dict, tokens: int) -> dict | None:
    """What Redis itself spent in the window, from its INFO at the window's two edges: CPU
    (``used_cpu_sys + used_cpu_user``, and the main thread's, which runs every command) and
    calls per command (those a Lua script ran included, beside the script call itself), per
    token the clients received in the window. Our own INFO calls are left out of the counts.
    None when the target runs without Redis (or Redis did not answer: ``error``)."""
    a, b = before.get("redis"), after.get("redis")
    if not a or not b:
        why = before.get("redis_error") or after.get("redis_error")
        return {"error": why} if why else None

    def cpu(info: dict, suffix: str = "") -> float:
        return info["used_cpu_sys" + suffix] + info["used_cpu_user" + suffix]

    def delta(key: str) -> dict[str, int]:
        out = {}
        for name, stat in b["commands"].items():
            n = stat.get(key, 0) - a["commands"].get(name, {}).get(key, 0)
            if n and name != "info":
                out[name] = int(n)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    calls = delta("calls")
    out = {"cpu_s": cpu(b) - cpu(a), "commands": sum(calls.values()), "by_command": calls,
           "usec_by_command": delta("usec"), "failed_calls": delta("failed_calls"),
           "rejected_calls": delta("rejected_calls"),
           "scripts": sum(calls.get(name, 0) for name in SCRIPT_COMMANDS)}
    if "used_cpu_sys_main_thread" in a and "used_cpu_sys_main_thread" in b:
        out["main_thread_cpu_s"] = cpu(b, "_main_thread") - cpu(a, "_main_thread")
    for key in ("total_net_input_bytes", "total_net_output_bytes", "total_connections_received"):
        if key in a and key in b:
            out[key[6:]] = int(b[key] - a[key])
    out["tokens"] = tokens
    if tokens:
        out["cpu_us_per_token"] = out["cpu_s"] / tokens * 1e6
        if "main_thread_cpu_s" in out:
            out["main_thread_cpu_us_per_token"] = out["main_thread_cpu_s"] / tokens * 1e6
        out["commands_per_token"] = out["commands"] / tokens
        out["commands_per_token_by_command"] = {k: v / tokens for k, v in calls.items()}
        for key in ("net_input_bytes", "net_output_bytes"):
            if key in out:
                out[key + "_per_token"] = out[key] / tokens
    return out


def disturbed(result: dict, foreign_limit: float = 0.3, lag_limit_ms: float = 20.0) -> str:
    """Why a window's figures may reflect the machine's noise more than the target ('' = clean).

    Something else used more than ``foreign_limit`` of a core, or took the server's core, or
    the load generator's own event loop ran late (its receive times, hence latencies, too).
    """
    cpu = result.get("cpu", {})
    why = []
    if cpu.get("foreign_cpu_util", 0) > foreign_limit:
        why.append(f"other processes used {cpu['foreign_cpu_util']:.2f} cores")
    if cpu.get("foreign_on_server_cpu_util", 0) > 0.1:
        why.append(f"{cpu['foreign_on_server_cpu_util']:.0%} of the server's CPU went elsewhere")
    lag = (result.get("loop_lag") or {}).get("p99_ms")
    if lag is not None and lag > lag_limit_ms:
        why.append(f"load generator loop lag p99 {lag:.0f} ms")
    return "; ".join(why)


def mint_token(secret: str, user: str = "bench", hours: float = 2.0) -> str:
    """An HS256 access token as the service and the baseline expect (PyJWT)."""
    import uuid

    import jwt

    now = int(time.time())
    claims = {"sub": user, "iat": now, "nbf": now, "exp": now + int(hours * 3600),
              "jti": str(uuid.uuid4()), "type": "access", "fresh": False}
    return jwt.encode(claims, secret, algorithm="HS256")


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def amain(plan: dict) -> dict:
    gen = LoadGen(plan)
    return await gen.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", help="a JSON plan (or @file); the flags below fill one")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--kind", choices=("service", "naive", "upstream"), default="service")
    parser.add_argument("--secret", help="JWT_SECRET_KEY of the server, to mint a token")
    parser.add_argument("--token", help="a bearer token to send as is")
    parser.add_argument("--scenario", choices=("steady", "ramp", "hold", "cancel",
                                                "closed_loop", "held", "stalled", "soak"),
                        default="steady")
    parser.add_argument("--streams", type=int)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--window", type=float)
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--stagger", type=float)
    parser.add_argument("--steps", help="ramp: comma-separated stream counts")
    parser.add_argument("--plateaus", help="hold: comma-separated stream counts")
    parser.add_argument("--close-after", type=int, dest="close_after")
    parser.add_argument("--p99-limit-ms", type=float, dest="p99_limit_ms")
    parser.add_argument("--sample-pid", type=int, dest="sample_pid",
                        help="sample this process tree (/proc) at window edges and plateaus")
    parser.add_argument("--deadline", type=float, default=300)
    args = parser.parse_args(argv)
    plan: dict = {}
    if args.plan:
        text = open(args.plan[1:]).read() if args.plan.startswith("@") else args.plan
        plan.update(json.loads(text))
    defaults = {"host": "127.0.0.1", "kind": "service", "scenario": "steady", "deadline": 300}
    for key in ("host", "port", "kind", "scenario", "streams", "rate", "window", "warmup",
                "stagger", "close_after", "p99_limit_ms", "sample_pid", "deadline"):
        value = getattr(args, key)
        if value is None:
            continue
        if key in defaults and value == defaults[key] and key in plan:
            continue  # an unchanged default does not override the plan
        plan[key] = value
    for key in ("steps", "plateaus"):
        if getattr(args, key):
            plan[key] = [int(x) for x in getattr(args, key).split(",")]
    if args.token:
        plan["token"] = args.token
    elif args.secret:
        plan["token"] = mint_token(args.secret)
    if "port" not in plan:
        parser.error("--port (or a plan with a port) is required")
    raise_nofile()
    result = asyncio.run(amain(plan))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
