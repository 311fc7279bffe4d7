"""Where Redis's CPU goes at the service's traffic shape: a replay, one part switched off at a time.

``bench/run.py --only turnover_redis`` measures what Redis spends per relayed token with the real
service. This tool says *why*: it sends Redis the same shape of traffic the service sends at
``--rate`` new streams a second (each a 200-token answer at 50 tokens/s, so ``4 x rate`` streams
open), from one process with no service in between, and reads Redis's own CPU
(``INFO cpu``) while one part at a time is left out:

* ``all``: what the service sends per request (its round trips, one after another, as the
  request path makes them: the rate limit's moving-window script; the admission, one pipeline
  with the open-stream slot's script and the stream id's claim, a ``SET NX`` of its record; at
  the end one pipeline with the terminal event's expiries, the slot's release and the token
  charge) and per tick (one pipeline every 0.2 s with one ``XADD`` per stream that has new
  events, a stream's keys and expiries with its first write);
* ``ticks only``: no per-request round trips: the events alone;
* ``round trips only``: no events;
* ``idle``: nothing but a connected client.

The scripts are stand-ins of the same size as the service's (the same commands inside), not the
service's own code: the figures are for comparing parts, and the real service's figure is
``turnover_redis``'s. Redis is pinned to the first CPU and this process to the last one when the
machine has two. Everything goes to a redis-server of its own on 127.0.0.1; each run is bounded
by ``--seconds``.

    .venv/bin/python bench/redis_costs.py [--rate 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from run import RedisServer  # the bench's own: pinned, no persistence, on 127.0.0.1

FRAME = b'id: 1796603485270-33\ndata: {"content":" g33","commandId":1796603485270}\n\n'
TOKENS, TOKENS_PER_SECOND, TICK_SECONDS, TTL_MS = 200, 50, 0.2, 300_000

MOVING_WINDOW = """local v = redis.call('LINDEX', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[2]) redis.call('LTRIM', KEYS[1], 0, 100) return 1"""
SLOT = """local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t[1]) local n = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], t[1] + 60, ARGV[1]) redis.call('PEXPIRE', KEYS[1], 60000) return 1"""
@dataclass
class Open:
    """One replayed stream: when it started and the last position written."""

    started: float
    user: str
    written: int = -1


@dataclass
class Replay:
    """The service's Redis traffic at ``rate`` new streams a second."""

    client: redis.Redis
    rate: float
    round_trips: bool
    ticks: bool
    streams: dict[int, Open] = field(default_factory=dict)
    tokens: int = 0

    def __post_init__(self) -> None:
        self.scripts = [self.client.register_script(s) for s in (MOVING_WINDOW, SLOT)]

    def start(self, stream_id: int) -> None:
        user = f"user{stream_id % 200}"
        if self.round_trips:  # one after another, as the request path makes them
            window, slot = self.scripts
            window(keys=[f"LIMITS:{user}"], args=[29, time.time()])  # flask-limiter's own
            admission = self.client.pipeline(transaction=False)  # the slot and the id at once
            slot(keys=[f"slots:{user}"], args=[stream_id], client=admission)
            admission.set(f"record:{stream_id}", f"{user} w", nx=True, px=TTL_MS)
            admission.execute()
        self.streams[stream_id] = Open(time.monotonic(), user)

    def tick(self, now: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        ended = []
        for stream_id, stream in self.streams.items():
            have = min(TOKENS, int((now - stream.started) * TOKENS_PER_SECOND) + 1)
            if have - 1 <= stream.written:
                continue
            if self.ticks:
                self._queue(pipe, stream_id, stream, have - 1)
            self.tokens += have - 1 - stream.written
            stream.written = have - 1
            if stream.written == TOKENS - 1:
                ended.append(stream_id)
        pipe.execute()
        for stream_id in ended:
            self.end(stream_id, self.streams.pop(stream_id))

    def _queue(self, pipe: redis.client.Pipeline, stream_id: int, stream: Open,
               last: int) -> None:
        first, key, meta = stream.written + 1, f"events:{stream_id}", f"record:{stream_id}"
        fields: dict[str, bytes | int | str] = {"s": first, "f": FRAME * (last - first + 1)}
        if last > first:
            fields["n"] = ",".join([str(len(FRAME))] * (last - first + 1))
        pipe.xadd(key, fields, id=f"{stream_id}-{last}",  # type: ignore[arg-type]
                  nomkstream=stream.written >= 0)  # no MINID: nothing to trim in 200 events
        if stream.written < 0:
            pipe.pexpire(key, TTL_MS)
            pipe.set(meta, f"{stream.user} w", px=TTL_MS)

    def end(self, stream_id: int, stream: Open) -> None:
        if not self.round_trips:
            return
        pipe = self.client.pipeline(transaction=False)  # the end's own, urgent pipeline
        pipe.pexpire(f"events:{stream_id}", TTL_MS)
        pipe.pexpire(f"record:{stream_id}", TTL_MS)
        pipe.zrem(f"slots:{stream.user}", stream_id)
        pipe.incrby(f"tokens:{stream.user}", TOKENS)
        pipe.expire(f"tokens:{stream.user}", 86400, nx=True)
        pipe.execute()

    def run(self, seconds: float) -> None:
        began = time.monotonic()
        next_start, next_tick, stream_id = began, began + TICK_SECONDS, 10**12
        while (now := time.monotonic()) < began + seconds:
            while next_start <= now and self.rate > 0:
                stream_id += 1
                self.start(stream_id)
                next_start += 1 / self.rate
            if now >= next_tick:
                self.tick(now)
                next_tick += TICK_SECONDS
            time.sleep(0.001)


def measure(label: str, rate: float, seconds: float, round_trips: bool, ticks: bool) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="axrisi-redis-costs-") as log_dir:
        server = RedisServer(Path(log_dir), cpus[0] if len(cpus) >= 2 else None).start()
        try:
            if len(cpus) >= 2:
                os.sched_setaffinity(0, {cpus[-1]})
            client = redis.Redis(port=server.port)
            replay = Replay(client, rate, round_trips, ticks)
            before, began = _cpu(client), time.monotonic()
            replay.run(seconds)
            spent, elapsed = _cpu(client) - before, time.monotonic() - began
            per_token = f"{spent * 1e6 / replay.tokens:6.2f} us/token" if replay.tokens else ""
            print(f"{label:18} Redis CPU {spent * 1e3 / elapsed:6.1f} ms/s  {per_token}  "
                  f"({replay.tokens / elapsed:,.0f} tokens/s, {rate:g} streams/s)")
        finally:
            server.stop()


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="new streams a second")
    parser.add_argument("--seconds", type=float, default=10.0, help="each part's run")
    args = parser.parse_args()
    measure("all", args.rate, args.seconds, round_trips=True, ticks=True)
    measure("ticks only", args.rate, args.seconds, round_trips=False, ticks=True)
    measure("round trips only", args.rate, args.seconds, round_trips=True, ticks=False)
    measure("idle", 0.0, args.seconds, round_trips=False, ticks=False)


if __name__ == "__main__":
    main()
