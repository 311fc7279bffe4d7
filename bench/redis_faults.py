"""The Redis fault run: resumes across two instances while Redis misbehaves, counted from outside.

Two gunicorn instances (one gevent worker each) share one redis-server through the tests' own
fault-injecting proxy (``tests/e2e/faultproxy.py``). For each fault, ``--streams`` clients each
start a stream (``--tokens`` tokens, ``--delay`` s apart) on one instance, drop it at a random
point and resume at once on the other, retrying a 503 after its ``Retry-After`` and resuming
again a reply that ended early, while the fault happens. It prints one table: resumes exact,
404s for a live stream, readers that never got a terminal event, tokens missing, and how many
resumes answered 503. The client logic is the e2e test's (``tests/e2e/test_redis_faults.py``),
at the size of an outside run.

    .venv/bin/python bench/redis_faults.py                # 40 streams x 40 tokens, 0.1 s apart
    .venv/bin/python bench/redis_faults.py --streams 10   # quicker

Traffic goes to 127.0.0.1 only; every scenario is bounded (a stream's deadline, then it stops).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e import test_redis_faults as harness  # noqa: E402
from tests.e2e.client import content_of  # noqa: E402
from tests.e2e.faultproxy import FaultProxy  # noqa: E402
from tests.e2e.redis_server import RedisServer  # noqa: E402
from tests.e2e.servers import Gunicorn  # noqa: E402
from tests.fake_upstream import FakeUpstream  # noqa: E402


def latency_throughout(proxy: FaultProxy, _redis: RedisServer) -> None:
    """100 ms added to every packet for the rest of the run (every stream's whole life)."""
    proxy.set_latency(0.1)
    time.sleep(harness.STAGGER + harness.TOKENS * harness.TOKEN_DELAY + 2)
    proxy.set_latency(0)


SCENARIOS = [
    ("healthy", harness.no_fault),
    ("one 300 ms stall", harness.short_stall),
    ("100 ms added per packet, throughout", latency_throughout),
    ("one 2 s stall", harness.long_stall),
    ("redis-server SIGSTOP for 3 s", harness.stopped_redis),
    ("redis-server killed, back after 3 s", harness.killed_redis),
]


def missing_tokens(run: harness.StreamRun) -> int:
    text = content_of(run.events)
    return sum(1 for token in run.tokens if token not in text)


def row(name: str, runs: list[harness.StreamRun]) -> str:
    lines = [line for run in runs for line in run.log]
    exact = sum(run.verdict() is None for run in runs)
    return (f"| {name} | {exact} of {len(runs)} | {sum(run.not_found for run in runs)} | "
            f"{sum(run.never_ended for run in runs)} | "
            f"{sum(missing_tokens(run) for run in runs)} | "
            f"{sum(' 503 ' in line for line in lines)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--verbose", action="store_true", help="each failed stream's history")
    args = parser.parse_args()
    harness.STREAMS, harness.TOKENS, harness.TOKEN_DELAY = args.streams, args.tokens, args.delay
    harness.STAGGER = min(2.0, args.tokens * args.delay / 2)
    harness.FAULT_AT = harness.STAGGER / 2
    harness.DEADLINE = args.tokens * args.delay + 25
    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{platform.python_version()}; {args.streams} streams x {args.tokens} tokens, "
          f"{args.delay} s apart, dropped at random and resumed on the other instance\n")
    print("| Redis during the run | resumes exact | 404 for a live stream | never ended | "
          "tokens missing | resumes answered 503 |")
    print("| --- | --- | --- | --- | --- | --- |")
    with RedisServer() as redis_server, FaultProxy(redis_server.port) as proxy, \
            FakeUpstream() as upstream:
        env = harness.env_for(upstream, REDIS_URL=proxy.url)
        with Gunicorn(env) as first, Gunicorn(env) as second:
            for number, (name, fault) in enumerate(SCENARIOS):
                harness.restore(proxy, redis_server)
                time.sleep(harness.RECOVERY)
                runs = harness.run_scenario((first, second), upstream, proxy, redis_server,
                                            fault, seed=number)
                print(row(name, runs), flush=True)
                if args.verbose:
                    for run in runs:
                        if run.verdict() is not None:
                            print(run.describe())


if __name__ == "__main__":
    main()
