"""Issue 22 step 6: does Redis's cost per relayed token hold as instances are added?

One invocation, four runs, so that every ratio comes from one run of the machine: one Redis, then
a Redis Cluster (3 masters + 3 replicas, ``tests/e2e/redis_cluster.py``), each with 1 and then 4
service instances (gunicorn, one gevent worker each), all of them on the same Redis. Every run
gets the same *total* load, the ``turnover`` shape of ``bench/run.py``: ``--users`` closed-loop
users (each its own JWT) sending their next ``POST /api/run`` on a new connection as soon as the
previous ``--tokens``-token answer at ``--rate`` tokens/s ended, split evenly over the instances,
one load generator per instance, all started at the same instant.

Each run starts its backend fresh, then its instances (each warmed up as ``run.py`` does), then
the load generators. Over one window, common to all of them, it reads the backend's own
``INFO cpu stats commandstats`` on every node at the window's two edges (this script reads them,
so one pair of readings covers all the instances): Redis CPU (``used_cpu_sys + used_cpu_user``)
and commands (``commandstats`` calls) summed over the masters, the replicas' CPU apart, per token
the clients received in the window. The relay's CPU per token is the instances' gunicorn trees
(``/proc``, read by each load generator at the same edges) summed over the instances. Requests
that failed (a non-200 answer, an ``event: error``, a stream cut short) are counted over the
whole run and printed, never left out.

Pinning, as ``run.py`` does for ``turnover_redis``: the instances on the last CPU; the
redis-servers, the upstream, the load generators and this script on the first (on a machine with
two; Redis on a third where there is one). Traffic goes to 127.0.0.1 only; every wait is bounded
and the whole run has a hard deadline (``--deadline``), after which everything is stopped.

    .venv/bin/python bench/scaling.py            # 120 users (~6,000 tokens/s): about 3.5 minutes
    .venv/bin/python bench/scaling.py --quick    # 40 users, 2 s warm-up, 4 s window: about 2

It prints the machine, one table (a row per run, then 4 / 1 instances per backend) and writes
every raw figure to ``bench/results/scaling-<time>.json`` (logs in ``<time>-logs/`` beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import loadgen
import sample
from run import (
    PY,
    RESULTS,
    ROOT,
    Bench,
    RedisServer,
    Server,
    log,
    machine_info,
    pinned,
    raise_nofile,
    run_loadgen,
)

BACKENDS = ("redis", "cluster")
NAMES = {"redis": "one Redis", "cluster": "Redis Cluster (3+3)"}
FULL = {"users": 120, "tokens": 200, "rate": 50.0, "stagger": 4.0, "warmup": 6.0, "window": 15.0,
        "idle": 5.0}
QUICK = {**FULL, "users": 40, "warmup": 2.0, "window": 4.0}
LEAD_SECONDS = 2.0
"""Time the load generators get to start Python and import before their common start instant."""
SETUP_SECONDS = 90.0
"""What one run's set-up and tear-down may take besides its load (a cluster, four instances)."""
TOP_COMMANDS = 5
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
DISTURBED_CORES = 0.3
"""Other processes' use over a window above which it is marked disturbed, as ``run.py`` does."""


class Stopped(BaseException):
    """The whole run's hard deadline passed, or a SIGTERM came. A BaseException, so that no
    run's ``except Exception`` swallows it: it unwinds through every ``finally``, which stop
    the processes."""


@dataclass
class Load:
    """The total load of every run, and the window it is measured in."""

    users: int
    tokens: int
    rate: float
    stagger: float
    warmup: float
    window: float
    idle: float
    """Seconds of Redis readings with the instances up and no load, before the load."""

    @property
    def offered_tps(self) -> float:
        """The ceiling: every user always receiving (a closed loop loses the gaps between
        one answer's end and the next one's first token)."""
        return self.users * self.rate

    def seconds(self) -> float:
        """How long a load generator runs: start spread, warm-up, window, the last answers."""
        return self.stagger + self.warmup + self.window + self.tokens / self.rate

    def shares(self, instances: int) -> list[int]:
        """The users split as evenly as they go over ``instances``."""
        base, extra = divmod(self.users, instances)
        return [base + (1 if i < extra else 0) for i in range(instances)]


@dataclass
class Node:
    """One redis-server of a backend, as the window's readings need it."""

    port: int
    pid: int
    role: str  # "master" or "replica"


@dataclass
class Backend:
    """What the instances are given (``env``) and the nodes whose INFO is read."""

    kind: str
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def start_backend(kind: str, bench: Bench, stack: contextlib.ExitStack) -> Backend:
    """A fresh backend of ``kind``, stopped when ``stack`` closes."""
    if kind == "redis":
        server = RedisServer(bench.log_dir, bench.redis_cpu)
        stack.callback(server.stop)  # before it starts: a deadline may come while it does
        server.start()
        return Backend(kind, {"REDIS_URL": server.url}, [Node(server.port, server.pid, "master")])
    return start_cluster(bench, stack)


def start_cluster(bench: Bench, stack: contextlib.ExitStack) -> Backend:
    """The e2e tests' cluster, imported here: the load generators' processes (this file too)
    need neither the tests' package nor what it imports. Its nodes are started by this
    process, already pinned to the harness's CPU; they are pinned again to Redis's own CPU,
    which is another one on a machine with three or more."""
    sys.path.insert(0, str(ROOT))
    from tests.e2e.redis_cluster import RedisCluster

    cluster = stack.enter_context(RedisCluster())  # killed, and its directory removed, at exit
    nodes = [Node(n.port, n.pid, "master") for n in cluster.masters()]
    nodes += [Node(n.port, n.pid, "replica") for n in cluster.replicas()]
    for node in nodes:
        pin_threads(node.pid, bench.redis_cpu)
    return Backend("cluster", cluster.env, nodes)


def pin_threads(pid: int, cpu: int | None) -> None:
    """Pin every thread of a running process (redis-server has I/O and background threads)."""
    if cpu is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {cpu})


def allowed_cpus(pid: int) -> str:
    """``Cpus_allowed_list`` of a process, as the kernel has it: the pinning, checked."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return "?"


# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------


def loadgen_child(plan_path: str, start_at: float) -> int:
    """One load generator (``loadgen.py``'s own code), started at ``start_at`` on the shared
    monotonic clock. ``run.run_loadgen`` cannot do this: it blocks until its one generator ends
    and starts it whenever Python is up, and the windows of several must start together with
    this script's own readings of Redis."""
    plan = json.loads(Path(plan_path).read_text())
    loadgen.raise_nofile()
    late = time.monotonic() - start_at
    if late < 0:
        time.sleep(-late)
    result = asyncio.run(loadgen.amain(plan))
    result["start_late_s"] = max(0.0, late)
    print(json.dumps(result))
    return 0


def start_loadgens(bench: Bench, plans: list[dict], stack: contextlib.ExitStack,
                   tmp: Path) -> tuple[list[subprocess.Popen[bytes]], float]:
    """Start one generator per plan, pinned to the harness's CPU; their common start time."""
    start_at = time.monotonic() + LEAD_SECONDS
    procs = []
    for i, plan in enumerate(plans):
        path = tmp / f"plan-{i}.json"
        path.write_text(json.dumps(plan))
        proc = subprocess.Popen([PY, str(Path(__file__).resolve()), "--loadgen-child", str(path),
                                 repr(start_at)], cwd=ROOT, stdout=subprocess.PIPE,
                                preexec_fn=pinned(bench.harness_cpu))
        stack.callback(stop_process, proc)
        procs.append(proc)
    return procs, start_at


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Kill a generator that is still running (a run that failed, or the deadline)."""
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def collect(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[dict]:
    """Each generator's JSON result (or an error record), all within ``timeout``."""
    deadline = time.monotonic() + timeout
    out = []
    for proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_process(proc)
            out.append({"error": f"loadgen did not finish within {timeout:.0f} s"})
            continue
        try:
            out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        except (ValueError, IndexError):
            out.append({"error": f"loadgen exited {proc.returncode} with no result"})
    return out


def plans(bench: Bench, servers: list[Server], load: Load) -> list[dict]:
    """One closed-loop plan per instance: its share of the users, each with a JWT of its own
    (distinct across instances), the same start spread, warm-up and window for all."""
    keys = bench.user_tokens(load.users)
    out, first = [], 0
    for server, users in zip(servers, load.shares(len(servers)), strict=True):
        plan = bench.plan(server, "closed_loop", users=users, tokens=load.tokens,
                          rate=load.rate, stagger=load.stagger, warmup=load.warmup,
                          window=load.window, deadline=load.seconds() + 40,
                          user_tokens=keys[first:first + users])
        # Without it the generator would count the other instances on that CPU as noise
        # taken from its own instance; this script measures the noise for the whole run.
        plan.pop("server_cpu", None)
        out.append(plan)
        first += users
    return out


# --------------------------------------------------------------------------------------------
# The window
# --------------------------------------------------------------------------------------------


def own_pids(bench: Bench, backend: Backend, servers: list[Server],
             procs: list[subprocess.Popen[bytes]]) -> dict[str, list[int]]:
    """The bench's processes, by part: what is not theirs in the machine's busy time is noise."""
    relay = [pid for server in servers for pid in sample.tree(server.pid)]
    return {"relay": relay, "loadgens": [p.pid for p in procs], "upstream": [bench.upstream.pid],
            "redis": [node.pid for node in backend.nodes]}


def snapshot(backend: Backend, pids: dict[str, list[int]]) -> dict:
    """One edge of the window: every node's INFO, CPU seconds of each part, the machine's."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {part: sum(cpu_or_zero(pid) for pid in group) for part, group in pids.items()}
    cpu["script"] = usage.ru_utime + usage.ru_stime
    return {"t": time.monotonic(), "system": sample.system_cpu(), "cpu": cpu,
            "info": {node.port: sample.redis_info(node.port) for node in backend.nodes}}


def cpu_or_zero(pid: int) -> float:
    try:
        return sample.cpu_seconds(pid)
    except OSError:
        return 0.0


def measure_window(backend: Backend, pids: dict[str, list[int]], start_at: float,
                   load: Load) -> tuple[dict, dict]:
    """The readings at the window's edges, taken when the generators open and close theirs."""
    time.sleep(max(0.0, start_at + load.stagger + load.warmup - time.monotonic()))
    before = snapshot(backend, pids)
    time.sleep(max(0.0, before["t"] + load.window - time.monotonic()))
    return before, snapshot(backend, pids)


def redis_figures(backend: Backend, before: dict, after: dict, tokens: int) -> dict:
    """Redis's own figures over the window: per node (``loadgen.redis_window``, the same
    reckoning as ``turnover_redis``'s, our INFO calls left out), then the masters summed and
    the replicas' CPU apart."""
    nodes = {}
    for node in backend.nodes:
        one = loadgen.redis_window({"redis": before["info"][node.port]},
                                    {"redis": after["info"][node.port]}, tokens) or {}
        reads = (after["info"][node.port].get("total_reads_processed", 0)
                 - before["info"][node.port].get("total_reads_processed", 0))
        nodes[str(node.port)] = {"role": node.role, "pid": node.pid, "reads": int(reads),
                                 "cpus_allowed": allowed_cpus(node.pid), **one}
    masters = [n for n in nodes.values() if n["role"] == "master"]
    replicas = [n for n in nodes.values() if n["role"] == "replica"]
    calls: dict[str, int] = {}
    for n in masters:
        for name, count in n["by_command"].items():
            calls[name] = calls.get(name, 0) + count
    calls = dict(sorted(calls.items(), key=lambda kv: -kv[1]))
    out = {"cpu_s": sum(n["cpu_s"] for n in masters), "commands": sum(calls.values()),
           "by_command": calls, "replica_cpu_s": sum(n["cpu_s"] for n in replicas),
           "failed_calls": sum(sum(n["failed_calls"].values()) for n in masters),
           "reads": sum(n["reads"] for n in masters), "nodes": nodes}
    if tokens:
        out["cpu_us_per_token"] = out["cpu_s"] / tokens * 1e6
        out["replica_cpu_us_per_token"] = out["replica_cpu_s"] / tokens * 1e6
        out["commands_per_token"] = out["commands"] / tokens
        out["reads_per_token"] = out["reads"] / tokens
        out["top_per_token"] = {k: v / tokens for k, v in list(calls.items())[:TOP_COMMANDS]}
    return out


def idle_figures(backend: Backend, seconds: float) -> dict:
    """Redis with every instance up and no stream, over ``seconds``: what the backend and the
    idle instances cost without tokens (cron, the cluster's bus and replication pings, the
    instances' own background calls), to tell a fixed cost per node or per instance from one
    per token."""
    if seconds <= 0:
        return {}
    pids = {"redis": [node.pid for node in backend.nodes]}
    before = snapshot(backend, pids)
    time.sleep(seconds)
    after = snapshot(backend, pids)
    red = redis_figures(backend, before, after, 0)
    elapsed = after["t"] - before["t"]
    return {"seconds": elapsed, "cpu_s_per_s": red["cpu_s"] / elapsed,
            "replica_cpu_s_per_s": red["replica_cpu_s"] / elapsed,
            "commands_per_s": red["commands"] / elapsed, "by_command": red["by_command"]}


def net_of_idle(red: dict, idle: dict, window_s: float, tokens: int) -> dict:
    """The masters' CPU per token less what they spent idle for as long as the window."""
    if not idle or not tokens:
        return {}
    return {"cpu_us_per_token_net_of_idle":
            (red["cpu_s"] - idle["cpu_s_per_s"] * window_s) / tokens * 1e6}


def noise(before: dict, after: dict) -> dict:
    """Cores each part of the bench used over the window, and what other processes took."""
    elapsed = after["t"] - before["t"]
    parts = {k: (after["cpu"][k] - before["cpu"][k]) / elapsed for k in after["cpu"]}
    busy = (after["system"]["cpu"] - before["system"]["cpu"]) / elapsed
    return {"window_s": elapsed, "cores": parts,
            "other_processes_cores": max(0.0, busy - sum(parts.values()))}


def loadgen_figures(results: list[dict]) -> dict:
    """The generators' windows added up: tokens, rates, the relay's CPU, failures."""
    ok = [r for r in results if "tokens_in_window" in r]
    errors: dict[str, int] = {}
    for r in results:
        for what, count in (r.get("errors") or {}).items():
            errors[what] = errors.get(what, 0) + count
    relay = [(r.get("cpu") or {}).get("server_cpu_s") for r in ok]
    relay_s = None if not ok or None in relay else sum(relay)
    tokens = sum(r["tokens_in_window"] for r in ok)
    p99 = [(r.get("latency") or {}).get("p99_ms") for r in ok]
    return {
        "tokens": tokens,
        "delivered_tps": sum(r.get("delivered_tps") or 0 for r in ok),
        "relay_cpu_s": relay_s,
        "relay_cpu_us_per_token": relay_s / tokens * 1e6 if relay_s is not None and tokens
        else None,
        "completed_in_window": sum(r.get("completed_in_window", 0) for r in ok),
        "tokens_whole_run": sum((r.get("run") or r).get("tokens", 0) for r in results),
        "latency_p99_ms_worst": max((v for v in p99 if v is not None), default=None),
        "failed": sum(errors.values()), "errors": errors,
        "codes": _merge(r.get("codes") or {} for r in results),
        "loadgen_failures": [r["error"] for r in results if "error" in r]
        + [f"loadgen {i} timed out" for i, r in enumerate(results) if r.get("timed_out")],
        "all_finished": all(r.get("all_finished") for r in ok) and len(ok) == len(results),
        "start_late_s": max((r.get("start_late_s", 0.0) for r in results), default=0.0),
    }


def _merge(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


# --------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------


def one_run(bench: Bench, kind: str, instances: int, load: Load, quiet_wait: float) -> dict:
    """A fresh backend, ``instances`` fresh instances on it, the load, the window's figures."""
    label = f"scaling-{kind}-{instances}x"
    log(f"{label}: starting {NAMES[kind]} and {instances} instance(s)")
    with contextlib.ExitStack() as stack:
        backend = start_backend(kind, bench, stack)
        env = {**backend.env, "AXRISI_GREENLET_GAUGE": "0"}
        servers = start_instances(bench, label, instances, env, stack)
        bench.upstream.reset()
        foreign_before = bench.wait_quiet(max_wait=quiet_wait)
        idle = idle_figures(backend, load.idle)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scaling-")))
        log(f"{label}: {load.users} users over {instances} instance(s), window "
            f"{load.window:g} s")
        procs, start_at = start_loadgens(bench, plans(bench, servers, load), stack, tmp)
        pids = own_pids(bench, backend, servers, procs)
        before, after = measure_window(backend, pids, start_at, load)
        results = collect(procs, load.seconds() + 60)
        gen = loadgen_figures(results)
        red = redis_figures(backend, before, after, gen["tokens"])
        red.update(net_of_idle(red, idle, after["t"] - before["t"], gen["tokens"]))
        return {"backend": kind, "instances": instances, "users": load.shares(instances),
                "env": env, **gen, "redis": red, "redis_idle": idle,
                "noise": noise(before, after), "foreign_cores_before": foreign_before,
                "relay_cpus_allowed": [allowed_cpus(s.worker_pid() or s.pid) for s in servers],
                "upstream_tokens_sent": bench.upstream.stats()["tokens_sent"],
                "loadgens": results}


def start_instances(bench: Bench, label: str, instances: int, env: dict[str, str],
                    stack: contextlib.ExitStack) -> list[Server]:
    """The instances, one after another, each stopped when ``stack`` closes."""
    return [start_instance(bench, f"{label}-{i}", env, stack) for i in range(instances)]


def start_instance(bench: Bench, label: str, env: dict[str, str],
                   stack: contextlib.ExitStack) -> Server:
    """``run.py``'s service (one gevent worker, pinned to the relay's CPU), warmed up as
    ``Bench.start_server`` does (20 short streams). Not ``start_server`` itself: it hands the
    server back only once it answers, and a deadline meanwhile would leave a gunicorn that
    nothing stops; here the stop is registered before the start."""
    server = Server("service", bench.upstream, bench.secret, bench.log_dir, bench.server_cpu,
                    env, label)
    stack.callback(server.stop)
    server.start()
    warm = run_loadgen(bench.plan(server, "steady", streams=20, rate=100, stagger=0.2,
                                  warmup=0.1, window=0.1, deadline=30), bench.harness_cpu, 60)
    if warm.get("error") or warm.get("errors"):
        log(f"{label}: warm-up trouble: {warm.get('error') or warm.get('errors')}")
    return server


def guarded_run(bench: Bench, kind: str, instances: int, load: Load,
                quiet_wait: float) -> dict:
    """One run; a failure is reported in its row, and the next run goes on."""
    try:
        return one_run(bench, kind, instances, load, quiet_wait)
    except Exception as error:
        log(f"{kind} x{instances} failed: {error!r}")
        return {"backend": kind, "instances": instances, "error": repr(error)}
    finally:
        with contextlib.suppress(Exception):
            bench.upstream.reset()


def run_all(bench: Bench, args: argparse.Namespace, load: Load) -> dict:
    """The upstream once, then every backend with every instance count, in that order."""
    results: dict = {"machine": machine_info(), "load": asdict(load), "quick": args.quick,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "pinning": {"relay_cpu": bench.server_cpu, "harness_cpu": bench.harness_cpu,
                                 "redis_cpu": bench.redis_cpu}, "runs": []}
    log("machine: " + results["machine"]["summary"])
    t0 = time.monotonic()
    try:
        bench.upstream.start()
        log(f"upstream on :{bench.upstream.port} (pid {bench.upstream.pid})")
        for kind in args.backends:
            for n in args.instances:
                results["runs"].append(guarded_run(bench, kind, n, load, args.quiet_wait))
    except Stopped as error:  # what was measured is still written and printed
        log(str(error))
        results["error"] = str(error)
    finally:
        bench.upstream.stop()
        results["elapsed_s"] = time.monotonic() - t0
    results["ratios"] = ratios(results["runs"])
    return results


def ratios(runs: list[dict]) -> dict:
    """Per backend, most instances ÷ fewest: the per-token figures that should hold at 1x."""
    out = {}
    keys = {"redis_cpu_per_token": ("redis", "cpu_us_per_token"),
            "redis_cpu_per_token_net_of_idle": ("redis", "cpu_us_per_token_net_of_idle"),
            "commands_per_token": ("redis", "commands_per_token"),
            "reads_per_token": ("redis", "reads_per_token"),
            "relay_cpu_per_token": ("relay_cpu_us_per_token",)}
    for kind in BACKENDS:
        done = sorted((r for r in runs if r["backend"] == kind and "error" not in r),
                      key=lambda r: r["instances"])
        if len(done) < 2:
            continue
        low, high = done[0], done[-1]
        out[kind] = {"of": f"{high['instances']} / {low['instances']} instances"}
        for name, path in keys.items():
            a, b = _dig(low, path), _dig(high, path)
            out[kind][name] = b / a if a and b is not None else None
    return out


def _dig(d: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def table(results: dict, load: Load) -> str:
    """The runs, one row each, then the ratios per backend."""
    head = ["backend", "instances", "tokens/s delivered (offered)", "Redis CPU / token",
            "same, net of idle", "Redis idle", "replicas' CPU / token", "Redis commands / token",
            "Redis reads / token", "relay CPU / token (sum)", "relay p99 (worst)", "failed",
            "top commands / token"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in results["runs"]:
        lines.append("| " + " | ".join(row(r, load)) + " |")
    lines.append("")
    for kind, q in results["ratios"].items():
        lines.append(f"{NAMES[kind]}, {q['of']}: Redis CPU per token "
                     f"{fmt(q['redis_cpu_per_token'], '.2f')}x, commands per token "
                     f"{fmt(q['commands_per_token'], '.2f')}x, reads per token "
                     f"{fmt(q['reads_per_token'], '.2f')}x, relay CPU per token "
                     f"{fmt(q['relay_cpu_per_token'], '.2f')}x")
    return "\n".join(lines)


def row(r: dict, load: Load) -> list[str]:
    name = NAMES[r["backend"]]
    if "error" in r:
        return [name, str(r["instances"]), f"FAILED: {r['error']}"] + [""] * 10
    red = r["redis"]
    top = ", ".join(f"{k} {v:.3f}" for k, v in (red.get("top_per_token") or {}).items())
    replicas = (f"{fmt(red.get('replica_cpu_us_per_token'), '.2f')} µs"
                if r["backend"] == "cluster" else "-")
    return [name, str(r["instances"]),
            f"{r['delivered_tps']:,.0f} ({load.offered_tps:,.0f})",
            f"{fmt(red.get('cpu_us_per_token'), '.2f')} µs",
            f"{fmt(red.get('cpu_us_per_token_net_of_idle'), '.2f')} µs", idle_cell(r), replicas,
            fmt(red.get("commands_per_token"), ".3f"), fmt(red.get("reads_per_token"), ".4f"),
            f"{fmt(r.get('relay_cpu_us_per_token'), '.1f')} µs",
            f"{fmt(r['latency_p99_ms_worst'], '.2f')} ms", str(r["failed"]), top]


def idle_cell(r: dict) -> str:
    """The masters' idle CPU and commands, per second (the replicas' CPU too, for a cluster)."""
    idle = r.get("redis_idle") or {}
    if not idle:
        return "n/a"
    cell = f"{idle['cpu_s_per_s'] * 1e3:.1f} ms/s, {idle['commands_per_s']:.0f} cmd/s"
    if r["backend"] == "cluster":
        cell += f" (replicas {idle['replica_cpu_s_per_s'] * 1e3:.1f} ms/s)"
    return cell


def conditions(results: dict, load: Load) -> list[str]:
    """One line per run: its window, who used the machine meanwhile, anything amiss."""
    lines = []
    for r in results["runs"]:
        where = f"- {NAMES[r['backend']]} x{r['instances']}"
        if "error" in r:
            lines.append(f"{where}: FAILED: {r['error']}")
            continue
        n = r["noise"]
        cores = ", ".join(f"{k} {v:.2f}" for k, v in n["cores"].items())
        notes = [f"window {n['window_s']:.1f} s; cores: {cores}; other processes "
                 f"{n['other_processes_cores']:.2f}; generators started "
                 f"{r['start_late_s'] * 1e3:.0f} ms late at most; users per instance "
                 f"{r['users']}; relay CPUs {sorted(set(r['relay_cpus_allowed']))}, Redis CPUs "
                 f"{sorted({v['cpus_allowed'] for v in r['redis']['nodes'].values()})}"]
        if n["other_processes_cores"] > DISTURBED_CORES:
            notes.append("DISTURBED: other processes took more than "
                         f"{DISTURBED_CORES:g} cores")
        if r["delivered_tps"] < 0.95 * load.offered_tps:
            notes.append(f"DELIVERED ONLY {r['delivered_tps'] / load.offered_tps:.0%} of the "
                         "offered tokens/s")
        if r["failed"] or r["codes"]:
            notes.append(f"FAILED requests {r['errors']}, codes {r['codes']}")
        if r["loadgen_failures"] or not r["all_finished"]:
            notes.append(f"LOAD GENERATORS: {r['loadgen_failures'] or 'streams cut at the end'}")
        if r["tokens_whole_run"] != r["upstream_tokens_sent"]:
            notes.append(f"the clients counted {r['tokens_whole_run']:,} tokens, the upstream "
                         f"sent {r['upstream_tokens_sent']:,}")
        if r["redis"]["failed_calls"]:
            notes.append(f"Redis failed calls {r['redis']['failed_calls']}")
        lines.append(f"{where}: " + "; ".join(notes))
    return lines


def report(results: dict, load: Load, out: Path) -> None:
    m = results["machine"]
    p = results["pinning"]
    print()
    print(f"Machine: {m['summary']}; commit {m['git_commit']} + {m['git_modified_files']} "
          "modified tracked files")
    print(f"Load (every run, in total): {load.users} closed-loop users, each a new connection "
          f"per {load.tokens}-token answer at {load.rate:g} tokens/s; {load.stagger:g} s spread, "
          f"{load.warmup:g} s warm-up, {load.window:g} s window; pinning: instances on CPU "
          f"{p['relay_cpu']}, upstream + load generators on CPU {p['harness_cpu']}, redis on "
          f"CPU {p['redis_cpu']}; {results['elapsed_s']:.0f} s")
    if results.get("error"):
        print(f"STOPPED EARLY: {results['error']}")
    print()
    print(table(results, load))
    print()
    print("Windows:")
    print("\n".join(conditions(results, load)))
    print()
    print(f"Raw results: {out.relative_to(ROOT)}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="40 users, 2 s warm-up, 4 s window (a smoke run)")
    parser.add_argument("--users", type=int, help="closed-loop users in total (default 120)")
    parser.add_argument("--tokens", type=int, help="tokens per answer (default 200)")
    parser.add_argument("--rate", type=float, help="tokens/s of each answer (default 50)")
    parser.add_argument("--stagger", type=float, help="users' start spread, s (default 4)")
    parser.add_argument("--warmup", type=float, help="s before the window (default 6)")
    parser.add_argument("--window", type=float, help="the measured window, s (default 15)")
    parser.add_argument("--idle", type=float,
                        help="s of Redis readings with the instances idle, before the load "
                        "(default 5; 0: none)")
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 4],
                        help="instance counts to run per backend (default 1 4)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--quiet-wait", type=float, default=None, metavar="SECONDS",
                        help="before each run's load, wait up to this long for other processes "
                        "to use under 0.3 cores (default 30; 0 with --quick)")
    parser.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                        help="stop everything after this long (default: from the sizes)")
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement alone")
    parser.add_argument("--loadgen-child", nargs=2, metavar=("PLAN", "START_AT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 30.0
    return args


def load_of(args: argparse.Namespace) -> Load:
    sizes = dict(QUICK if args.quick else FULL)
    sizes.update({k: getattr(args, k) for k in sizes if getattr(args, k) is not None})
    return Load(**sizes)


def harness(args: argparse.Namespace) -> Bench:
    """``run.py``'s Bench for its pieces (the CPUs, this process pinned to the harness's, the
    upstream, the JWT secret and users' tokens, plans, the quiet wait, the results' stamp and
    log directory), given the options it reads."""
    return Bench(argparse.Namespace(quick=args.quick, no_pin=args.no_pin, env=[],
                                    baseline_env=[], service_dir=None, text_chars=0,
                                    quiet_wait=0.0))


def on_signal(signum: int, _frame: Any) -> None:
    why = "the run's deadline passed" if signum == signal.SIGALRM else "SIGTERM"
    raise Stopped(f"{why}: everything is being stopped")


def become_subreaper() -> None:
    """Orphans of this run's processes (a gunicorn worker whose master was killed, a process
    started just as the deadline struck) are handed to this process instead of init, so that
    ``reap_leftovers`` finds them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")


def reap_leftovers(timeout: float = 10.0) -> list[int]:
    """SIGKILL whatever this run started that still runs (there should be nothing: every part
    stops its own), and reap it, bounded; the pids that were still running."""
    found: set[int] = set()
    deadline = time.monotonic() + timeout
    while (kids := sample.children(os.getpid())) and time.monotonic() < deadline:
        for pid in kids:
            if not zombie(pid):
                found.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return sorted(found)


def zombie(pid: int) -> bool:
    """Whether a process has exited and waits to be reaped (or is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.loadgen_child:
        return loadgen_child(args.loadgen_child[0], float(args.loadgen_child[1]))
    load = load_of(args)
    runs = len(args.backends) * len(args.instances)
    deadline = args.deadline or runs * (load.seconds() + SETUP_SECONDS + args.quiet_wait) + 60
    raise_nofile(65536)
    bench = harness(args)
    become_subreaper()
    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.alarm(int(deadline))
    try:
        results = run_all(bench, args, load)
    finally:
        signal.alarm(0)
        leftovers = reap_leftovers()
        if leftovers:
            log(f"killed processes left running: {leftovers}")
    results["leftovers_killed"] = leftovers
    out = RESULTS / f"scaling-{bench.stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    report(results, load, out)
    clean = "error" not in results and all("error" not in r and not r["failed"]
                                             for r in results["runs"])
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
