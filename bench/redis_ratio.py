"""The relay's own CPU per token with ``REDIS_URL`` over without it, as pairs of windows.

``run.py --only turnover_redis`` measures each side once, one window after the other, and this
machine's speed drifts by more than the figure it compares: two runs of the same code an hour
apart gave 1.01x and 1.17x. Here the same ``turnover_redis`` window (200 users, each a new
request per 200-token answer at 50 tokens/s, events kept, one worker pinned to one core, a real
``redis-server`` on the other) runs ``--pairs`` times on each side, in the order with, without,
without, with, with, ... (ABBA: a drift that is linear in time weighs on both sides alike), each
window on a fresh server. Each pair gives a ratio, and the table reports every pair's, their
median and the ratio of the medians.

    .venv/bin/python bench/redis_ratio.py              # 4 pairs: about 6 minutes
    .venv/bin/python bench/redis_ratio.py --pairs 2    # about 3

It writes the raw windows to ``bench/results/redis-ratio-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from run import RESULTS, Bench, RedisServer, log, machine_info


def pair_order(pairs: int) -> list[bool]:
    """With Redis (True) or without, ABBA: with, without, without, with, ..."""
    order: list[bool] = []
    for index in range(pairs):
        order += [True, False] if index % 2 == 0 else [False, True]
    return order


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    bench = Bench(argparse.Namespace(quick=False, no_pin=False, env=[], baseline_env=[],
                                     service_dir=None, text_chars=0, quiet_wait=20.0))
    measure = bench.steady("turnover_redis", "closed_loop")
    windows: list[dict[str, Any]] = []
    machine = machine_info()
    log("machine: " + machine["summary"])
    try:
        bench.upstream.start()
        bench.redis = RedisServer(bench.log_dir, bench.redis_cpu).start()
        for index, with_redis in enumerate(pair_order(args.pairs)):
            label = "with REDIS_URL" if with_redis else "without"
            log(f"window {index + 1}: {label}")
            env = {"REDIS_URL": bench.redis.url} if with_redis else {}
            server = bench.start_server("service", f"ratio{index}", env)
            try:
                result = measure(server)
            finally:
                bench.upstream.reset()
                server.stop()
            windows.append({"redis": with_redis, "at": time.strftime("%H:%M:%S"),
                            "us_per_token": result.get("server_cpu_us_per_token"),
                            "disturbed": result.get("disturbed"), "result": result})
    finally:
        bench.upstream.stop()
        if bench.redis is not None:
            bench.redis.stop()
    summary = summarize(windows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"redis-ratio-{bench.stamp}.json"
    out.write_text(json.dumps({"machine": machine, "summary": summary, "windows": windows},
                              indent=2, default=str))
    print(f"\nMachine: {machine['summary']}\n")
    print("| pair | with REDIS_URL | without | ratio |\n| --- | --- | --- | --- |")
    for number, (with_us, without_us, ratio) in enumerate(summary["pairs"], 1):
        print(f"| {number} | {with_us:.1f} us | {without_us:.1f} us | {ratio:.3f}x |")
    print(f"| median of the pairs' ratios | | | {summary['median_ratio']:.3f}x |")
    print(f"| medians | {summary['median_with']:.1f} us | {summary['median_without']:.1f} us | "
          f"{summary['ratio_of_medians']:.3f}x |")
    disturbed = [w["at"] for w in windows if w["disturbed"]]
    if disturbed:
        print(f"\nDisturbed windows (other processes used the server's core): {disturbed}")
    print(f"\nRaw results: {out}")
    return 0


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = []
    for first, second in zip(windows[::2], windows[1::2], strict=True):
        with_w, without_w = (first, second) if first["redis"] else (second, first)
        pairs.append((with_w["us_per_token"], without_w["us_per_token"],
                      with_w["us_per_token"] / without_w["us_per_token"]))
    median_with = statistics.median(p[0] for p in pairs)
    median_without = statistics.median(p[1] for p in pairs)
    return {"pairs": pairs, "median_ratio": statistics.median(p[2] for p in pairs),
            "median_with": median_with, "median_without": median_without,
            "ratio_of_medians": median_with / median_without}


if __name__ == "__main__":
    sys.exit(main())
