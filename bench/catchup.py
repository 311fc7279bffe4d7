"""Issue 24 item 6: what a snapshot catch-up and the list of streams cost, measured from outside.

One invocation, one machine state, every figure beside its comparison:

* **Resuming a 2,000-token answer**, with and without ``?catchup=snapshot``: the bytes of the
  reply and the time from the request to its last byte, for a finished answer read from its
  start (a reader coming back to it on a phone), on the generating instance (from its memory)
  and on another instance (through Redis). Each figure is the median and the 90th percentile of
  ``--repeats`` requests, each on a new connection.
* **``GET /api/streams`` with 50 streams kept** for the user: its time on an instance without
  Redis, on the instance that ran them (its memory and Redis) and on another (Redis only).

The service runs as a user runs it: gunicorn with one gevent worker per instance, the bench's
own OpenAI-compatible upstream (``bench/upstream.py``) over plain HTTP, a real ``redis-server``.
The upstream writes 2,000 tokens at 400 tokens/s, so that most tokens reach the service alone and
the kept answer has about one event per token, as a model's 50 tokens/s would give; each token's
content is the upstream's time stamp (``t=<ns> ``, 22 bytes: longer than a real token, which
favours neither side of a ratio of event counts but inflates both byte counts alike).

    .venv/bin/python bench/catchup.py               # about a minute
    .venv/bin/python bench/catchup.py --repeats 5   # quicker, rougher

It prints the machine and a table, and writes the raw figures to
``bench/results/catchup-<time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import RESULTS, RedisServer, Server, Upstream, log, machine_info, mint_token

TOKENS = 2000
RATE = 400
LISTED = 50


def request(port: int, method: str, path: str, token: str, body: dict | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
    """One request on a new connection, read to its end: status, body, seconds it took."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    began = time.perf_counter()
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                 headers={"Authorization": f"Bearer {token}",
                          "Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    took = time.perf_counter() - began
    conn.close()
    return response.status, data, took


def events_in(data: bytes) -> int:
    return data.count(b"\ndata: ")  + data.startswith(b"data: ")


def answer(server: Server, token: str, words: str) -> str:
    """Run one stream to its end; its id."""
    status, data, _took = request(server.port, "POST", "/api/run", token,
                                  {"command": "summarize", "text": f"A page. {words}"})
    if status != 200 or b'"done":true' not in data:
        raise RuntimeError(f"the stream failed: {status} {data[-300:]!r}")
    first = data.index(b"data: ") + 6
    return str(json.loads(data[first:data.index(b"\n", first)])["commandId"])


def timings(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p90_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000, 2)}


def resume_costs(server: Server, token: str, stream_id: str, repeats: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for label, query in (("replay", ""), ("snapshot", "?catchup=snapshot")):
        times, sizes, counts = [], set(), set()
        for _ in range(repeats):
            status, data, took = request(server.port, "GET", f"/api/streams/{stream_id}{query}",
                                         token)
            if status != 200 or b'"done":true' not in data:
                raise RuntimeError(f"the resume failed: {status} {data[-200:]!r}")
            times.append(took)
            sizes.add(len(data))
            counts.add(events_in(data))
        found[label] = {"bytes": max(sizes), "events": max(counts), **timings(times)}
    return found


def list_costs(server: Server, token: str, repeats: int) -> dict[str, Any]:
    times, counts = [], set()
    for _ in range(repeats):
        status, data, took = request(server.port, "GET", "/api/streams", token)
        if status != 200:
            raise RuntimeError(f"the list failed: {status} {data[:200]!r}")
        times.append(took)
        counts.add(len(json.loads(data)["streams"]))
    return {"streams": max(counts), "bytes": len(data), **timings(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = Path(tempfile.mkdtemp(prefix="bench-catchup-"))
    secret = secrets.token_urlsafe(48)
    upstream = Upstream(log_dir, None).start()
    redis = RedisServer(log_dir, None).start()
    env = {"REDIS_URL": redis.url, "AXRISI_RESUME_MAX_EVENTS": "10000"}
    servers = [Server("service", upstream, secret, log_dir, None, env, f"redis{i}")
               for i in (1, 2)]
    alone = Server("service", upstream, secret, log_dir, None, {}, "alone")
    results: dict[str, Any] = {"machine": machine_info(), "repeats": args.repeats}
    try:
        for server in (*servers, alone):
            server.start()
        first, second = servers
        reader = mint_token(secret, "catchup-reader")
        log(f"a {TOKENS}-token answer at {RATE} tokens/s on the first instance")
        stream_id = answer(first, reader, f"tokens={TOKENS} rate={RATE}")
        time.sleep(0.5)  # its last events are in Redis within the mirror's 0.2 s
        results["resume_here"] = resume_costs(first, reader, stream_id, args.repeats)
        results["resume_elsewhere"] = resume_costs(second, reader, stream_id, args.repeats)
        lister = mint_token(secret, "catchup-lister")
        log(f"{LISTED} streams kept for one user, on the first instance and on one without Redis")
        for _ in range(LISTED):
            answer(first, lister, "tokens=20 rate=2000")
            answer(alone, lister, "tokens=20 rate=2000")
        time.sleep(0.5)
        results["list_alone"] = list_costs(alone, lister, args.repeats)
        results["list_here"] = list_costs(first, lister, args.repeats)
        results["list_elsewhere"] = list_costs(second, lister, args.repeats)
    finally:
        for server in (*servers, alone):
            with contextlib.suppress(Exception):
                server.stop()
        redis.stop()
        upstream.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"catchup-{stamp}.json"
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nRaw results: {out}")
    return 0


def print_table(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"\nMachine: {m.get('cpu_model')}, {m.get('cpus')} CPUs, {m.get('kernel')}, "
          f"Python {m.get('python')}; {results['repeats']} requests per figure, each on a new "
          "connection\n")
    print("| figure | replay | snapshot | snapshot / replay |\n| --- | --- | --- | --- |")
    for where, name in (("resume_here", "on the generating instance (memory)"),
                        ("resume_elsewhere", "on another instance (Redis)")):
        r, s = results[where]["replay"], results[where]["snapshot"]
        print(f"| resume a {TOKENS}-token answer {name}: bytes | {r['bytes']:,} "
              f"({r['events']:,} events) | {s['bytes']:,} ({s['events']} events) | "
              f"{s['bytes'] / r['bytes']:.3f}x |")
        print(f"| same: time to the last byte, median / p90 | {r['median_ms']} / {r['p90_ms']} ms "
              f"| {s['median_ms']} / {s['p90_ms']} ms | {s['median_ms'] / r['median_ms']:.2f}x |")
    print(f"\n| `GET /api/streams`, {LISTED} streams kept | streams listed | bytes | "
          "median / p90 |\n| --- | --- | --- | --- |")
    for where, name in (("list_alone", "one instance, no Redis"),
                        ("list_here", "with Redis, on the instance that ran them"),
                        ("list_elsewhere", "with Redis, on another instance")):
        r = results[where]
        print(f"| {name} | {r['streams']} | {r['bytes']:,} | {r['median_ms']} / {r['p90_ms']} ms |")


if __name__ == "__main__":
    sys.exit(main())
