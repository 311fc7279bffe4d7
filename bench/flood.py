"""Issue 23 item 5: what a flood of bad tokens from one blocked address costs the good users.

Measured as a new user would meet it, in one invocation: the service under gunicorn with one
gevent worker (pinned to the last CPU; everything else on the first), the bench's upstream
(``bench/upstream.py``), the failed-login limit at its default (60/minute), and

1. **idle**: ``--good`` good users' requests, one ``--pause`` after another (as under the flood:
   a CPU left idle between two requests answers slower than back to back), each a new connection: a
   ``POST /api/run`` with a valid token and ``X-Forwarded-For: 198.51.100.<n>`` (the service
   trusts loopback proxies by default, so that header is the user's address). Time to first
   token (TTFT): from sending the request to the first event that carries a token.
2. **under the flood**: an attacker (this script with ``--attack``, a subprocess, niced) opens
   ``--connections`` keep-alive connections carrying ``X-Forwarded-For: 203.0.113.7`` and sends
   bad-token ``POST /api/run`` requests on each, reconnecting when the service closes one, until
   ``--requests`` were answered or ``--flood-seconds`` passed. From its first 429 (the address is
   blocked), ``--alone`` seconds of the flood alone (the worker's CPU per refusal, net of its CPU
   with no traffic at all, read before 1), then good users' requests go on as in 1 to its end.

Figures: TTFT p50/p95 idle and under the flood (goal: under the flood within 2x of idle); the
worker's CPU in each window (``/proc``: user + system); the attacker's answers by status, its 429s
per second from its first 429, and the connections it had to open; how much CPU other processes
took meanwhile (the machine's noise). ``--before DIR`` first measures another checkout the same
way (``git archive HEAD | tar -x -C DIR``: the code without this working tree's changes), then
this one, and prints both side by side::

    .venv/bin/python bench/flood.py                                   # this checkout, ~1 minute
    mkdir /tmp/head && git archive HEAD | tar -x -C /tmp/head
    .venv/bin/python bench/flood.py --before /tmp/head                # before and after

It prints one table and writes the raw figures to ``bench/results/flood-<time>.json``. All
traffic goes to 127.0.0.1, and every load is bounded in requests and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import sample
from run import PY, RESULTS, ROOT, Server, Upstream, log, machine_info, mint_token, pinned

ATTACKER = "203.0.113.7"
ATTACKER_NICE = 10
STAMP = re.compile(rb"t=\d{6,20}")
UPSTREAM_WORDS = "tokens=5 rate=1000"
"""A short answer whose first token comes at once: the TTFT is the service's."""


# --------------------------------------------------------------------------------------------
# The attacker (a subprocess: its event loop must not share a GIL with the TTFT timing)
# --------------------------------------------------------------------------------------------


async def _attack_one(port: int, request: bytes, state: dict[str, Any]) -> None:
    """One attacker connection: requests back to back; a new connection when one is closed."""
    reader = writer = None
    while state["sent"] < state["limit"] and time.monotonic() < state["deadline"]:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                state["connect_errors"] += 1
                await asyncio.sleep(0.01)
                continue
            state["connections"] += 1
        assert reader is not None
        state["sent"] += 1
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            state["broken"] += 1
            writer.close()
            reader = writer = None
            continue
        now = time.monotonic()
        state["status"][status] = state["status"].get(status, 0) + 1
        if status == 429:
            if state["first_429"] is None:
                state["first_429"] = now
                print(json.dumps({"blocked": now, "cpu_s": _self_cpu()}), flush=True)
            state["last_429"] = now
            state["after_block"] += 1
            state["times_429"].append(now)
        if headers.get("connection", "").lower() == "close":
            state["closed_by_server"] += 1
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _attack(port: int, connections: int, limit: int, seconds: float) -> dict[str, Any]:
    body = json.dumps({"command": "summarize", "text": "x"}).encode()
    request = (f"POST /api/run HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Authorization: Bearer not-a-token\r\nContent-Type: application/json\r\n"
               f"X-Forwarded-For: {ATTACKER}\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    began = time.monotonic()
    state: dict[str, Any] = {"sent": 0, "limit": limit, "deadline": began + seconds,
                             "connections": 0, "connect_errors": 0, "broken": 0, "status": {},
                             "first_429": None, "last_429": None, "after_block": 0,
                             "closed_by_server": 0, "times_429": []}
    await asyncio.gather(*(_attack_one(port, request, state) for _ in range(connections)))
    ended = time.monotonic()
    deadline = state.pop("deadline")
    first = state.pop("first_429")
    last = state.pop("last_429")
    # 429s per 50 ms from the first one: held refusals that all wake at once make bursts.
    buckets: dict[int, int] = {}
    for t in state.pop("times_429"):
        index = int((t - first) * 20)
        buckets[index] = buckets.get(index, 0) + 1
    busiest = max(buckets, key=lambda i: buckets[i], default=0)
    state["peak_429_in_50ms"] = buckets.get(busiest, 0)
    state["peak_429_at_s"] = busiest / 20
    state["per_50ms_first_2s"] = [buckets.get(i, 0) for i in range(40)]
    window = (ended - first) if first is not None else None
    return {**state, "status": {str(k): v for k, v in sorted(state["status"].items())},
            "seconds": round(ended - began, 3),
            "blocked_after_s": round(first - began, 3) if first is not None else None,
            "window_s": round(window, 3) if window else None,
            "refusals_per_s": round(state["after_block"] / window, 1) if window else None,
            "last_429_at_s": round(last - began, 3) if last is not None else None,
            "deadline_s": round(deadline - began, 3), "cpu_s": _self_cpu()}


def attack_main(args: argparse.Namespace) -> int:
    result = asyncio.run(_attack(args.attack, args.connections, args.requests,
                                 args.flood_seconds))
    print(json.dumps({"result": result}), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Good users and the windows
# --------------------------------------------------------------------------------------------


def good_request(port: int, token: str, n: int) -> float:
    """One good user's request on a new connection: seconds to its first token (read to the
    end, so that the stream finishes)."""
    body = json.dumps({"command": "summarize",
                       "text": f"A page {n}. {UPSTREAM_WORDS}"}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        began = time.perf_counter()
        conn.request("POST", "/api/run", body=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "X-Forwarded-For": f"198.51.100.{n % 200 + 1}"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"a good user got {response.status}: {response.read()[:200]!r}")
        first = None
        while True:
            line = response.readline()
            if not line:
                break
            if first is None and line.startswith(b"data:") and STAMP.search(line):
                first = time.perf_counter() - began
        if first is None:
            raise RuntimeError("a good user's stream carried no token")
        return first
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ttft_summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": round(statistics.median(values) * 1000, 2),
            "p95_ms": round(percentile(values, 0.95) * 1000, 2),
            "max_ms": round(max(values) * 1000, 2),
            "all_ms": [round(v * 1000, 2) for v in values]}


class Window:
    """CPU of the worker, of the bench's own processes and of everything else over a window:
    :meth:`stop` at its end, :meth:`figures` once the CPU of a process that has ended since
    (the attacker, which reports its own) is known."""

    def __init__(self, worker: int, server: int, upstream: int) -> None:
        self.worker, self.server, self.upstream = worker, server, upstream
        self.start = self._read()
        self.end = self.start

    def _read(self) -> dict[str, Any]:
        return {"t": time.monotonic(), "system": sample.system_cpu(),
                "worker": sample.cpu_seconds(self.worker),
                "ours": (sum(_cpu(p) for p in sample.tree(self.server)) + _cpu(self.upstream)
                         + _self_cpu())}

    def stop(self) -> None:
        self.end = self._read()

    def figures(self, other_ours_s: float = 0.0) -> dict[str, float]:
        a, b = self.start, self.end
        elapsed = b["t"] - a["t"]
        worker = b["worker"] - a["worker"]
        ours = b["ours"] - a["ours"] + other_ours_s
        foreign = max(0.0, b["system"]["cpu"] - a["system"]["cpu"] - ours)
        return {"seconds": round(elapsed, 3), "worker_cpu_s": round(worker, 3),
                "worker_cpu_util": round(worker / elapsed, 3),
                "others_cpu_cores": round(foreign / elapsed, 3),
                "steal_s": round(b["system"].get("steal", 0) - a["system"].get("steal", 0), 3)}


def _cpu(pid: int) -> float:
    try:
        return sample.cpu_seconds(pid)
    except OSError:
        return 0.0


def _self_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


def measure(label: str, service_dir: Path, args: argparse.Namespace, log_dir: Path,
            cpus: tuple[int | None, int | None]) -> dict[str, Any]:
    """One target: idle, then under the flood."""
    server_cpu, harness_cpu = cpus
    secret = secrets.token_urlsafe(48)
    upstream = Upstream(log_dir, harness_cpu).start()
    server = Server("service", upstream, secret, log_dir, server_cpu,
                    {"LOG_LEVEL": "warning"}, label, service_dir)
    info = machine_info(service_dir)
    found: dict[str, Any] = {"service_dir": str(service_dir), "git": info.get("git_commit"),
                             "git_modified_files": info.get("git_modified_files")}
    try:
        server.start()
        worker = server.worker_pid()
        assert worker is not None, "no gunicorn worker"
        token = mint_token(secret, "flood-good-user")
        for n in range(10):  # warm-up: lazy imports, the upstream's connection pool
            good_request(server.port, token, n)
        # No traffic at all for a moment: the worker's own background (the baseline below).
        quiet = Window(worker, server.pid, upstream.pid)
        time.sleep(args.alone)
        quiet.stop()
        found["quiet"] = quiet.figures()
        log(f"{label}: idle, {args.good} good users' requests")
        window = Window(worker, server.pid, upstream.pid)
        idle = []
        for n in range(args.good):  # paced as under the flood: a CPU left idle between two
            idle.append(good_request(server.port, token, n))  # requests answers slower
            time.sleep(args.pause)
        window.stop()
        found["idle"] = {"ttft": ttft_summary(idle), **window.figures()}
        log(f"{label}: the flood ({args.requests:,} requests on {args.connections} connections "
            f"from {ATTACKER}, at most {args.flood_seconds:.0f} s) and good users meanwhile")
        attacker = subprocess.Popen(
            [PY, str(Path(__file__).resolve()), "--attack", str(server.port),
             "--connections", str(args.connections), "--requests", str(args.requests),
             "--flood-seconds", str(args.flood_seconds)],
            cwd=ROOT, stdout=subprocess.PIPE, preexec_fn=pinned(harness_cpu, ATTACKER_NICE))
        assert attacker.stdout is not None
        lines: list[bytes] = []
        blocked = threading.Event()

        def read_attacker() -> None:
            assert attacker.stdout is not None
            for line in attacker.stdout:
                lines.append(line)
                if b'"blocked"' in line:
                    blocked.set()
            blocked.set()  # it ended (blocked or not): stop waiting

        reader = threading.Thread(target=read_attacker, daemon=True)
        reader.start()
        blocked.wait(args.flood_seconds + 30)
        # The flood alone for a moment: what each refusal costs the worker.
        alone, counted = Window(worker, server.pid, upstream.pid), refusals(server)
        time.sleep(args.alone)
        alone.stop()
        refused_alone = (refusals(server) or 0) - (counted or 0)
        found["alone"] = {"refusals": refused_alone, **{
            k: v for k, v in alone.figures().items() if k.startswith(("seconds", "worker"))}}
        # Net of the worker's background (its CPU with no traffic at all, per second).
        background = found["quiet"]["worker_cpu_util"] * found["alone"]["seconds"]
        found["alone"]["worker_cpu_us_per_refusal"] = (
            round(max(0.0, found["alone"]["worker_cpu_s"] - background) / refused_alone * 1e6)
            if refused_alone else None)
        window = Window(worker, server.pid, upstream.pid)
        flooded: list[float] = []
        n = 0
        while attacker.poll() is None:
            flooded.append(good_request(server.port, token, n))
            n += 1
            time.sleep(args.pause)
        window.stop()
        reader.join(10)
        records = [json.loads(line) for line in lines if line.startswith(b"{")]
        result = next((r["result"] for r in records if "result" in r), None)
        at_block = next((r["cpu_s"] for r in records if "blocked" in r), None)
        if result is None or at_block is None:
            raise RuntimeError(f"the attacker was never blocked or printed no result: {lines}")
        found["attacker"] = result
        found["flood"] = {"ttft": ttft_summary(flooded) if flooded else None,
                          **window.figures(result["cpu_s"] - at_block)}
        found["metrics_refusals"] = refusals(server)
    finally:
        server.stop()
        upstream.stop()
    return found


def refusals(server: Server) -> float | None:
    try:
        text = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        text.request("GET", "/metrics")
        body = text.getresponse().read().decode()
        text.close()
    except OSError:
        return None
    found = re.search(r"^axrisi_auth_refusals_total (\S+)$", body, re.M)
    return float(found.group(1)) if found else None


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> None:
    m = results["machine"]
    runs = results["runs"]
    labels = list(runs)
    print(f"\nMachine: {m['summary']}; load average at start "
          f"{', '.join(str(x) for x in m['loadavg_at_start'])}")
    print(f"Good users: one request every {results['pause_s']} s after the last, each a new "
          f"connection ({results['good']} idle, then from {results['alone_s']} s after the "
          f"block to the flood's end); the flood: {results['requests']:,} bad-token requests at "
          f"most, {results['connections']} keep-alive connections from {ATTACKER}, at most "
          f"{results['flood_seconds']:.0f} s\n")
    heads = [f"{label} ({_origin(runs[label])})" for label in labels]
    print("| figure | " + " | ".join(heads) + " |")
    print("| --- |" + " --- |" * len(labels))

    def row(name: str, fn: Any) -> None:
        cells = []
        for label in labels:
            try:
                cells.append(fn(runs[label]))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")

    row("good users' TTFT idle, p50 / p95",
        lambda r: f"{r['idle']['ttft']['p50_ms']} / {r['idle']['ttft']['p95_ms']} ms")
    row("good users' TTFT under the flood, p50 / p95",
        lambda r: f"{r['flood']['ttft']['p50_ms']} / {r['flood']['ttft']['p95_ms']} ms "
                  f"({r['flood']['ttft']['n']} requests)")
    row("under the flood / idle, p50 / p95 (goal: within 2x)", lambda r: _ratio(r))
    row("worker CPU, idle / under the flood (good users included)",
        lambda r: f"{r['idle']['worker_cpu_util']:.0%} / {r['flood']['worker_cpu_util']:.0%}")
    row("worker CPU with no traffic (its background)",
        lambda r: f"{r['quiet']['worker_cpu_util']:.1%}")
    row("worker CPU with the flood alone; per refusal (net of the background)",
        lambda r: f"{r['alone']['worker_cpu_util']:.0%}; "
                  f"{r['alone']['worker_cpu_us_per_refusal']} µs "
                  f"({r['alone']['refusals']:,} in {r['alone']['seconds']} s)")
    row("attacker: answers by status",
        lambda r: ", ".join(f"{v:,} x {k}" for k, v in r["attacker"]["status"].items()))
    row("attacker: 429s per second once blocked",
        lambda r: f"{r['attacker']['refusals_per_s']:,} "
                  f"({r['attacker']['after_block']:,} in {r['attacker']['window_s']} s)")
    row("attacker: connections opened / closed by the service",
        lambda r: f"{r['attacker']['connections']:,} / {r['attacker']['closed_by_server']:,}")
    row("attacker: most 429s in one 50 ms (bursts)",
        lambda r: f"{r['attacker']['peak_429_in_50ms']} (at +{r['attacker']['peak_429_at_s']} s)")
    row("axrisi_auth_refusals_total at the end",
        lambda r: f"{r['metrics_refusals']:,.0f}")
    row("other processes' CPU, idle / flood window (cores; noise)",
        lambda r: f"{r['idle']['others_cpu_cores']:.2f} / {r['flood']['others_cpu_cores']:.2f}")


def _origin(run: dict[str, Any]) -> str:
    if not run["git"]:
        return run["service_dir"]
    modified = run["git_modified_files"]
    return f"{run['git']}" + (f" + {modified} modified files" if modified else "")


def _ratio(r: dict[str, Any]) -> str:
    idle, flood = r["idle"]["ttft"], r["flood"]["ttft"]
    p50, p95 = flood["p50_ms"] / idle["p50_ms"], flood["p95_ms"] / idle["p95_ms"]
    return f"{p50:.2f}x / {p95:.2f}x ({'met' if max(p50, p95) <= 2 else 'not met'})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="DIR",
                        help="first measure the service from this checkout, labelled 'before'")
    parser.add_argument("--good", type=int, default=200, help="good requests in the idle window")
    parser.add_argument("--pause", type=float, default=0.02,
                        help="seconds between two good requests (idle and under the flood)")
    parser.add_argument("--alone", type=float, default=3.0,
                        help="seconds of the flood alone (no good users) once the attacker is "
                        "blocked: the worker's CPU per refusal")
    parser.add_argument("--requests", type=int, default=20_000,
                        help="the flood's bad-token requests (at most)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--flood-seconds", type=float, default=20.0,
                        help="the flood stops after this long even short of --requests")
    parser.add_argument("--service-dir", metavar="DIR",
                        help="measure the service from this checkout instead of this one (with "
                        "--before: the 'after')")
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement to the kernel")
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        return attack_main(args)

    cpus_available = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cpus_available) < 2:
        cpus: tuple[int | None, int | None] = (None, None)
    else:
        cpus = (cpus_available[-1], cpus_available[0])
        os.sched_setaffinity(0, {cpus_available[0]})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    results: dict[str, Any] = {
        "machine": machine_info(), "good": args.good, "pause_s": args.pause,
        "requests": args.requests, "connections": args.connections, "alone_s": args.alone,
        "flood_seconds": args.flood_seconds, "server_cpu": cpus[0], "harness_cpu": cpus[1],
        "logs": str(log_dir), "runs": {}}
    targets = ([("before", Path(args.before).resolve())] if args.before else [])
    after = Path(args.service_dir).resolve() if args.service_dir else ROOT
    targets.append(("after" if args.before else "service", after))
    for label, service_dir in targets:
        results["runs"][label] = measure(label, service_dir, args, log_dir, cpus)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"flood-{stamp}.json"
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nRaw results: {out}; server logs: {log_dir}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
