"""The benchmark, in one command: ``python bench/run.py`` (``--quick`` for a short smoke run).

It starts the fake OpenAI-compatible upstream (``bench/upstream.py``) on loopback, then for each
scenario starts a fresh gunicorn (gevent worker, one worker) for each of the two targets:

* **service**: Axrisi Stream as deployed, ``gunicorn -c gunicorn.conf.py app:app``;
* **baseline**: the naive relay kept in ``bench/naive_app.py``, under the same gunicorn worker;

and drives it with ``bench/loadgen.py`` (a subprocess) under the same load, alternating which
target goes first from one scenario to the next so that the machine's noise hits both. The
scenarios ``turnover_tls``, ``turnover_tls_redis``, ``real_tls``, ``hold_tls`` and ``held_tls``
are twins of ``turnover``, ``turnover_redis``, ``real``, ``hold`` and ``held`` with both targets'
upstream over HTTPS (a second ``upstream.py`` with a certificate for 127.0.0.1 made once per run
by ``bench/tlscert.py``, trusted through ``SSL_CERT_FILE``): ``--only production`` runs the five
and their plain twins, the production
configuration beside the plain path (issue 23). Two scenarios run the service alone: ``scrape`` (a
/metrics scrape's cost to the worker's loop at 5,000 open streams, as deployed and with the
greenlet gauge) and ``soak`` (issue 26: 2,000 streams at 1 token/s held 300 s while /metrics is
scraped every 15 s; the longest gap between two tokens of any stream, the seconds in which the long
gaps ended, and the worker's garbage-collector pauses read from the scrapes'
``axrisi_gc_pause_seconds``). The servers run pinned to one CPU and the load generator and the
upstream to another (on a machine with at least two), so that the server's figures are one core's.
It samples the server's process tree from /proc (``bench/sample.py``), prints the machine, then one
table (figure | service | baseline | ratio | target | met?), and writes every raw figure to
``bench/results/<time>.json``.

Every load is bounded in streams and in time and stops itself; all traffic goes to 127.0.0.1.
See ``bench/README.md`` for what each figure means and how it is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import sample
import tlscert

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable

TARGETS = ("service", "baseline")
UPSTREAM_NICE = 10
LABEL = {"service": "service", "baseline": "baseline"}

# Metric names read from the service's /metrics when it has one (issue 6). A missing endpoint or
# a missing name is reported as "n/a", never as zero.
METRICS_GAUGES = {
    "open_streams": ("axrisi_open_streams", "axrisi_streams_open"),
    "greenlets": ("axrisi_greenlets", "axrisi_worker_greenlets"),
    "open_stream_slots": ("axrisi_open_stream_slots", "axrisi_stream_slots_in_use",
                          "axrisi_user_open_streams"),
    "upstream_connections": ("axrisi_upstream_connections", "axrisi_upstream_connections_open"),
}


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------

FULL = {
    "turnover": {"users": 200, "tokens": 200, "rate": 50, "stagger": 4, "warmup": 6,
                 "window": 15, "retries": 1, "deadline": 90},
    "real": {"users": 200, "tokens": [100, 500], "rate": [30, 80], "seed": 13, "stagger": 4,
             "warmup": 8, "window": 15, "retries": 1, "deadline": 100},
    "requests": {"users": 4, "tokens": 1, "rate": 50, "keepalive": True, "stagger": 0.1,
                 "warmup": 2, "window": 10, "retries": 1, "deadline": 60},
    "held": {"streams": 2000, "tokens": 500, "rate": 100, "answering": 80, "hold": 900,
             "open_timeout": 150, "answer_age": 30, "answer_wait": 20, "settle": 3,
             "settle_max": 20, "deadline": 300},
    "stalled": {"streams": 200, "rate": 40, "pad": 1000, "read_for": 1, "stagger": 2,
                "drop_deadline": 60, "after": 10, "send_timeout": 3, "resume_ttl": 5,
                "deadline": 150},
    "hold": {"plateaus": [1000, 5000, 10000], "rate": 0.2, "open_rate": 500, "settle": 3,
             "plateau_timeout": 60, "answer_wait": 15, "max_inflight": 200, "inflight_age": 1.0,
             "settle_cpu": 0.9, "settle_max": 30, "deadline": 400},
    "cpu": {"streams": 100, "rate": 20, "stagger": 2, "warmup": 3, "window": 15,
            "retries": 2, "deadline": 90},
    "latency": {"streams": 200, "rate": 50, "stagger": 4, "warmup": 3, "window": 15,
                "retries": 2, "deadline": 90},
    "ramp": {"steps": [40, 80, 120, 160, 200, 240, 280, 320, 360, 400, 450, 500, 600, 800,
                       1000],
             "rate": 50, "stagger": 1, "start_rate": 100, "warmup": 2, "window": 5, "pause": 1,
             "retries": 2, "deadline": 300},
    "cancel": {"streams": 1000, "stagger": 20, "rate": 20, "close_after": 3,
               "silent_first": 120, "close_timeout": 30, "settle": 3, "deadline": 90},
    "scrape": {"streams": 5000, "rate": 0.2, "open_rate": 500, "settle": 3,
               "plateau_timeout": 60, "answer_wait": 15, "max_inflight": 200,
               "inflight_age": 1.0, "settle_cpu": 0.9, "settle_max": 30, "healthz": 50,
               "scrapes": 10, "probe_delay_ms": 1, "linger": 180, "deadline": 300},
    "soak": {"streams": 2000, "rate": 1, "open_rate": 200, "open_timeout": 60, "answer_wait": 15,
             "settle": 3, "hold": 300, "scrape_every": 15, "gap_ms": 1500, "worse_gap_ms": 2000,
             "linger": 60, "deadline": 480},
}
QUICK = {
    "turnover": {"users": 200, "tokens": 200, "rate": 50, "stagger": 2, "warmup": 2,
                 "window": 3, "retries": 0, "deadline": 60},
    "real": {"users": 200, "tokens": [100, 500], "rate": [30, 80], "seed": 13, "stagger": 2,
             "warmup": 2, "window": 3, "retries": 0, "deadline": 70},
    "requests": {"users": 4, "tokens": 1, "rate": 50, "keepalive": True, "stagger": 0.1,
                 "warmup": 1, "window": 2, "retries": 0, "deadline": 45},
    "held": {"streams": 200, "tokens": 500, "rate": 100, "answering": 80, "hold": 120,
             "open_timeout": 30, "answer_age": 30, "answer_wait": 10, "settle": 1,
             "settle_max": 5, "deadline": 80},
    "stalled": {"streams": 50, "rate": 40, "pad": 1000, "read_for": 1, "stagger": 1,
                "drop_deadline": 20, "after": 10, "send_timeout": 3, "resume_ttl": 5,
                "deadline": 60},
    "hold": {"plateaus": [100, 300], "rate": 2.0, "open_rate": 300, "settle": 0.5,
             "plateau_timeout": 8, "answer_wait": 3, "settle_max": 3, "deadline": 40},
    "cpu": {"streams": 50, "rate": 20, "stagger": 0.5, "warmup": 1, "window": 2,
            "retries": 0, "deadline": 30},
    "latency": {"streams": 100, "rate": 50, "stagger": 0.5, "warmup": 1, "window": 2,
                "retries": 0, "deadline": 30},
    "ramp": {"steps": [40, 160], "rate": 50, "stagger": 0.5, "warmup": 1, "window": 2,
             "pause": 0.3, "retries": 0, "deadline": 40},
    "cancel": {"streams": 100, "stagger": 2, "rate": 20, "close_after": 3,
               "silent_first": 60, "close_timeout": 10, "settle": 1.5, "deadline": 30},
    "scrape": {"streams": 300, "rate": 0.2, "open_rate": 300, "settle": 0.5,
               "plateau_timeout": 8, "answer_wait": 3, "settle_max": 3, "healthz": 20,
               "scrapes": 5, "probe_delay_ms": 1, "linger": 60, "deadline": 90},
    "soak": {"streams": 300, "rate": 1, "open_rate": 100, "open_timeout": 20, "answer_wait": 10,
             "settle": 1, "hold": 40, "scrape_every": 5, "gap_ms": 1500, "worse_gap_ms": 2000,
             "linger": 30, "deadline": 130},
}
# turnover_redis is turnover run three ways (the service with REDIS_URL, without, the baseline):
# the same sizes, so that its figures read beside turnover's.
for _sizes in (FULL, QUICK):
    _sizes["turnover_redis"] = dict(_sizes["turnover"])
# The production configuration (issue 23): the same scenarios with the service's upstream over
# HTTPS (a certificate the run makes for 127.0.0.1, trusted through SSL_CERT_FILE), at the same
# sizes as their plain twins, so that each reads beside its twin.
TLS_TWINS = {"turnover_tls": "turnover", "turnover_tls_redis": "turnover_redis",
             "real_tls": "real", "held_tls": "held", "hold_tls": "hold"}
"""Each scenario on the HTTPS upstream -> its twin on the plain one (same function, sizes and
settings)."""
for _sizes in (FULL, QUICK):
    for _tls, _plain in TLS_TWINS.items():
        _sizes[_tls] = dict(_sizes[_plain])
# Idle streams over HTTPS up to issue 23's 2,000 (its figure), not the plain hold's 10,000: a
# shorter run, and the plain hold's rows at 1,000 and 5,000 read beside it.
FULL["hold_tls"]["plateaus"] = [1000, 2000]
# The headline first (issue 13: what users do), then the long-lived streams of issue 7; the
# long soak of issue 26 late; ``stalled`` last, since it fills the kernel's socket buffers for a
# while.
REDIS_IDLE_SECONDS = 5.0
"""How long turnover_redis reads Redis's idle CPU before the load (its fixed cost per second)."""
SCENARIOS = ("turnover", "turnover_tls", "turnover_redis", "turnover_tls_redis", "real",
             "real_tls", "requests", "hold", "hold_tls", "held", "held_tls", "cpu", "latency",
             "ramp", "cancel", "scrape", "soak", "stalled")
PRESETS = {
    # Issue 23: the bench of record is the production configuration (the upstream over HTTPS,
    # with and without REDIS_URL, real-sized answers, held answers), each beside its plain-HTTP
    # twin and the naive baseline (over the same upstream) in the same run.
    "production": ("turnover", "turnover_tls", "turnover_redis", "turnover_tls_redis", "real",
                   "real_tls", "hold", "hold_tls", "held", "held_tls"),
}
"""Names ``--only`` takes for a set of scenarios."""


def plain_twin(name: str) -> str:
    """The scenario a TLS one repeats over HTTPS (itself for a plain one)."""
    return TLS_TWINS.get(name, name)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int | None, niceness: int = 0):
    """A preexec_fn that pins the child (and whatever it forks) to one CPU, and renices it."""
    if cpu is None and not niceness:
        return None

    def _pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if niceness:
            os.nice(niceness)

    return _pin


def http_json(url: str, method: str = "GET", timeout: float = 10.0,
              context: ssl.SSLContext | None = None) -> dict:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout, context=context) as response:
        return json.loads(response.read())


class Upstream:
    """``bench/upstream.py`` as a subprocess; its control endpoints.

    With ``tls`` (a PEM certificate and its key, ``bench/tlscert.py``) it serves over HTTPS:
    its ``url`` is ``https://``, the runner's own requests to it trust that certificate, and
    ``cert_file`` is what a server under test gets as ``SSL_CERT_FILE``."""

    def __init__(self, log_dir: Path, cpu: int | None,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.log_path = log_dir / ("upstream-tls.log" if tls else "upstream.log")
        self.cpu = cpu
        self.tls = tls
        self.cert_file: Path | None = tls[0] if tls else None
        self.context = ssl.create_default_context(cafile=str(tls[0])) if tls else None
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> Upstream:
        read_fd, write_fd = os.pipe()
        tls_args = ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])] \
            if self.tls else []
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [PY, str(BENCH / "upstream.py"), "--port", "0", "--ready-fd", str(write_fd),
                 *tls_args],
                cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                # Niced: sharing a core with the load generator, the upstream must not delay
                # the generator's reads (its receive times are the latency figures); a late
                # token send only lowers the offered rate, which is measured. It stays in the
                # runner's session: with autogroup scheduling, nice only ranks processes
                # within one session, and the load generator runs in this one.
                preexec_fn=pinned(self.cpu, UPSTREAM_NICE))
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as ready:
            line = ready.readline()
        if not line:
            raise RuntimeError(f"the upstream did not start: {self.log_path.read_text()}")
        self.port = json.loads(line)["port"]
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict:
        return http_json(self.url + "/_bench/stats", context=self.context)

    def closes(self) -> dict:
        return http_json(self.url + "/_bench/closes", timeout=30, context=self.context)

    def reset(self) -> dict:
        return http_json(self.url + "/_bench/reset", "POST", context=self.context)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class RedisServer:
    """The bench's own ``redis-server`` for the service's ``REDIS_URL``: loopback, a free port,
    no persistence (``--save "" --appendonly no``: no fork, no disk write in a window), pinned
    off the server's CPU so that the server's figures stay one core's and Redis's CPU is its own
    (read from its INFO by the load generator)."""

    def __init__(self, log_dir: Path, cpu: int | None) -> None:
        self.log_path = log_dir / "redis.log"
        self.cpu = cpu
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.dir],
                stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=pinned(self.cpu))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start: see {self.log_path}")
            with contextlib.suppress(OSError):
                sample.redis_info(self.port, timeout=1)
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """One target under gunicorn's gevent worker, as a subprocess in its own session."""

    def __init__(self, target: str, upstream: Upstream, secret: str, log_dir: Path,
                 cpu: int | None, extra_env: dict[str, str], label: str,
                 service_dir: Path = ROOT, baseline_env: dict[str, str] | None = None) -> None:
        self.target = target
        # With --baseline-env the baseline is the service itself with those settings added.
        self.kind = "service" if target == "service" or baseline_env else "naive"
        self.cwd = service_dir if self.kind == "service" else ROOT
        self.port = free_port()
        self.runtime_dir = tempfile.mkdtemp(prefix=f"bench-{target}-")
        self.log_path = log_dir / f"{label}-{target}.log"
        self.cpu = cpu
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": self.runtime_dir,
            "XDG_RUNTIME_DIR": self.runtime_dir,
            "PYTHONUNBUFFERED": "1",
            "OPENAI_BASE_URL": upstream.url + "/v1",
            "OPENAI_API_KEY": "x",
            "JWT_SECRET_KEY": secret,
            "AXRISI_MODEL": "bench-model",
        }
        cert_file = getattr(upstream, "cert_file", None)  # any object with a ``url`` will do
        if cert_file is not None:
            # The upstream over HTTPS: both targets trust its certificate as a deployment
            # trusts its CA bundle (httpx's default SSL context reads SSL_CERT_FILE).
            env["SSL_CERT_FILE"] = str(cert_file)
        if self.kind == "service":
            env.update({
                "PORT": str(self.port),
                "WEB_CONCURRENCY": "1",
                "AXRISI_MAX_STREAMS": "20000",
                # Per-user limits far above the load (one bench user opens every stream, or
                # in the closed-loop scenarios one JWT per user), so that they refuse nothing
                # but every stream still takes and gives back its open-stream slot (counted,
                # with the leak check reading the slots gauge).
                "AXRISI_MAX_STREAMS_PER_USER": "1000000",
                "AXRISI_RATE_LIMIT": "1000000000/minute",
                "AXRISI_GREENLET_GAUGE": "1",  # the leak checks read it
                "LOG_LEVEL": "warning",
            })
            self.cmd = [PY, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                        "-b", f"127.0.0.1:{self.port}", "app:app"]
        else:
            # Its own config file: gunicorn would otherwise load the service's
            # ./gunicorn.conf.py (and its hooks) from the working directory.
            self.cmd = [PY, "-m", "gunicorn", "-c", str(BENCH / "naive_gunicorn.conf.py"),
                        "-b", f"127.0.0.1:{self.port}", "bench.naive_app:app"]
        env.update(extra_env)
        if target == "baseline" and baseline_env:
            env.update(baseline_env)
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> Server:
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=log_file,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=pinned(self.cpu))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited at start:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer means the worker serves (the baseline has no /healthz)
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{self.target} did not answer within {timeout} s")
        return self

    def worker_pid(self) -> int | None:
        kids = sample.children(self.pid)
        return kids[0] if kids else None

    def metrics(self) -> dict:
        """The /metrics gauges named in METRICS_GAUGES, where the service exposes them."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
                text = response.read().decode("utf-8", "replace")
        except (OSError, urllib.error.HTTPError) as error:
            return {"available": False, "why": str(error)[:80]}
        found: dict = {"available": True}
        for key, names in METRICS_GAUGES.items():
            for name in names:
                total, seen = 0.0, False
                for m in re.finditer(rf"^{name}(?:{{[^}}]*}})?\s+([0-9.eE+-]+)\s*$", text, re.M):
                    total += float(m.group(1))
                    seen = True
                if seen:
                    found[key] = total
                    break
        return found

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


def run_loadgen(plan: dict, cpu: int | None, timeout: float) -> dict:
    """Run bench/loadgen.py with a plan; its JSON result (or an error record)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(plan, f)
        plan_path = f.name
    try:
        proc = subprocess.run([PY, str(BENCH / "loadgen.py"), "--plan", "@" + plan_path],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=None, timeout=timeout,
                              preexec_fn=pinned(cpu))
    except subprocess.TimeoutExpired:
        return {"error": f"loadgen did not finish within {timeout} s"}
    finally:
        os.unlink(plan_path)
    if proc.returncode != 0:
        return {"error": f"loadgen exited {proc.returncode}"}
    try:
        return json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "loadgen printed no result"}


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = QUICK if args.quick else FULL
        self.secret = secrets.token_urlsafe(48)
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.log_dir = RESULTS / f"{self.stamp}-logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cpus = sorted(os.sched_getaffinity(0))
        if args.no_pin or len(cpus) < 2:
            self.server_cpu = self.harness_cpu = self.redis_cpu = None
        else:
            self.server_cpu, self.harness_cpu = cpus[-1], cpus[0]
            os.sched_setaffinity(0, {self.harness_cpu})
            # Redis never shares the server's core: a third CPU where there is one, else the
            # harness's (it then competes with the load generator; the windows' loop lag and
            # the harness's CPU say whether that bit).
            self.redis_cpu = cpus[1] if len(cpus) >= 3 else self.harness_cpu
        self.redis: RedisServer | None = None
        self.extra_env = dict(kv.split("=", 1) for kv in args.env)
        self.baseline_env = dict(kv.split("=", 1) for kv in args.baseline_env)
        self.service_dir = Path(args.service_dir).resolve() if args.service_dir else ROOT
        # The plain-HTTP upstream; the HTTPS one is started the first time a scenario needs it
        # (https_upstream). ``upstream`` is the one the current scenario's servers use.
        self.plain_upstream = Upstream(self.log_dir, self.harness_cpu)
        self.tls_upstream: Upstream | None = None
        self.upstream = self.plain_upstream
        self.token = mint_token(self.secret)
        self._user_tokens: list[str] = []
        self.quiet_before = 0.0
        self.warmed_ns = 0

    def user_tokens(self, users: int) -> list[str]:
        """One JWT per closed-loop user (distinct ``sub``, same secret), minted once per run."""
        while len(self._user_tokens) < users:
            user = f"bench-user-{len(self._user_tokens)}"
            self._user_tokens.append(mint_token(self.secret, user))
        return self._user_tokens[:users]

    def plan(self, server: Server, scenario: str, **extra) -> dict:
        plan = {"port": server.port, "kind": server.kind, "token": self.token,
                "sample_pid": server.pid, "upstream_pid": self.upstream.pid,
                "server_cpu": self.server_cpu,
                "scenario": scenario, "text_chars": self.args.text_chars, **extra}
        if self.redis is not None and server.env.get("REDIS_URL") == self.redis.url:
            # The load generator reads Redis's INFO at the edges of its own window.
            plan.update(redis_port=self.redis.port, redis_pid=self.redis.pid)
        return plan

    def wait_quiet(self, limit: float = 0.3, max_wait: float | None = None) -> float:
        """Wait (bounded) until other processes use less than ``limit`` cores; their last use."""
        max_wait = self.args.quiet_wait if max_wait is None else max_wait
        if max_wait <= 0:
            return -1.0  # not measured
        deadline = time.monotonic() + max_wait
        ours = [u.pid for u in (self.plain_upstream, self.tls_upstream)
                if u is not None and u.proc is not None]
        while True:
            a, t0 = sample.system_cpu(), time.monotonic()
            mine0 = sum(_cpu_or_zero(p) for p in ours)
            time.sleep(1.0)
            b, t1 = sample.system_cpu(), time.monotonic()
            mine1 = sum(_cpu_or_zero(p) for p in ours)
            foreign = max(0.0, (b["cpu"] - a["cpu"]) - (mine1 - mine0)) / (t1 - t0)
            if foreign < limit or time.monotonic() >= deadline:
                if foreign >= limit:
                    log(f"the machine is busy (other processes use {foreign:.2f} cores); "
                        "measuring anyway")
                return foreign
            log(f"waiting for a quieter machine (other processes use {foreign:.2f} cores)")

    def start_server(self, target: str, label: str, env: dict[str, str] | None = None) -> Server:
        self.upstream.reset()
        self.quiet_before = self.wait_quiet()
        server = Server(target, self.upstream, self.secret, self.log_dir, self.server_cpu,
                        {**(env or {}), **self.extra_env}, label, self.service_dir,
                        self.baseline_env).start()
        # Warm-up: import paths, the SDK client, first-use caches; then let it settle.
        warm = run_loadgen(self.plan(server, "steady", streams=20, rate=100, stagger=0.2,
                                     warmup=0.1, window=0.1, deadline=30),
                           self.harness_cpu, 60)
        if warm.get("error") or warm.get("errors"):
            log(f"{target}: warm-up trouble: {warm.get('error') or warm.get('errors')}")
        self.warmed_ns = time.monotonic_ns()  # its streams' resume TTL runs from about here
        time.sleep(0.5)
        return server

    def each_target(self, index: int, label: str, fn, env: dict[str, str] | None = None,
                    runs: list[tuple[str, str, dict[str, str]]] | None = None) -> dict:
        """Each target in turn on a fresh server, the order alternating with ``index``.

        ``runs`` (result name, target, env) replaces the default (each of TARGETS with
        ``env``): a scenario that also runs one target under other settings, in the same run.
        """
        runs = runs or [(t, t, env or {}) for t in TARGETS]
        order = runs if index % 2 == 0 else runs[::-1]
        out: dict = {}
        for name, target, run_env in order:
            log(f"{label}: {name}")
            server = None
            try:
                server = self.start_server(target, label if name == target else
                                           f"{label}-{name}", run_env)
                out[name] = fn(server)
                out[name]["foreign_cores_before"] = round(self.quiet_before, 2)
            except Exception as error:  # a failed scenario is reported, the run goes on
                log(f"{label}: {name} failed: {error!r}")
                out[name] = {"error": repr(error)}
                if server is not None:
                    out[name]["log_tail"] = server.log_tail()
            finally:
                with contextlib.suppress(Exception):
                    self.upstream.reset()
                if server is not None:
                    server.stop()
        out["order"] = [name for name, _, _ in order]
        return out

    def https_upstream(self) -> Upstream:
        """The upstream over HTTPS, started once per run the first time a scenario needs it:
        a certificate for 127.0.0.1 made into the run's log directory (``bench/tlscert.py``),
        a second ``upstream.py`` serving with it, pinned and niced as the plain one."""
        if self.tls_upstream is None:
            tls = tlscert.make(self.log_dir)
            self.tls_upstream = Upstream(self.log_dir, self.harness_cpu, tls).start()
            log(f"upstream over HTTPS on :{self.tls_upstream.port} (pid "
                f"{self.tls_upstream.pid}; certificate {tls[0].relative_to(ROOT)})")
        return self.tls_upstream

    def redis_runs(self) -> list[tuple[str, str, dict[str, str]]]:
        """turnover_redis: the service with REDIS_URL at the bench's own redis-server, the same
        service without it (their ratio is what Redis costs the relay, measured in one run),
        and the baseline (no Redis: it has none). Starts the redis-server once per run."""
        if self.redis is None:
            self.redis = RedisServer(self.log_dir, self.redis_cpu).start()
            log(f"redis-server on :{self.redis.port} (pid {self.redis.pid}, CPU "
                f"{self.redis_cpu})")
        return [("service", "service", {"REDIS_URL": self.redis.url}),
                ("service_no_redis", "service", {}), ("baseline", "baseline", {})]

    def scrape_runs(self) -> list[tuple[str, str, dict[str, str]]]:
        """scrape: the service as deployed (no greenlet gauge, the default; the bench's leak
        checks set it, so it is turned off here), then the same service with
        AXRISI_GREENLET_GAUGE=1, whose scrapes walk the heap: what the walk costs, same run.
        No naive baseline: it has no /healthz or /metrics."""
        return [("service", "service", {"AXRISI_GREENLET_GAUGE": "0"}),
                ("service_gauge", "service", {"AXRISI_GREENLET_GAUGE": "1"})]

    def soak_runs(self) -> list[tuple[str, str, dict[str, str]]]:
        """soak: the service as deployed (no greenlet gauge: the bench's leak checks set it).
        No naive baseline: it has no /metrics, and the question is the service's own pause."""
        return [("service", "service", {"AXRISI_GREENLET_GAUGE": "0"})]

    # --- the scenarios

    def hold(self, server: Server, name: str = "hold") -> dict:
        size = self.sizes[name]
        result = run_loadgen(self.plan(server, "hold", **size), self.harness_cpu,
                             size["deadline"] + 60)
        result["upstream_after"] = self.upstream.stats()
        return result

    def steady(self, name: str, scenario: str = "steady"):
        """A measuring window, measured again (bounded) when the machine disturbed it."""
        def fn(server: Server) -> dict:
            size = self.sizes[name]
            extra = {}
            if scenario == "closed_loop":
                extra["user_tokens"] = self.user_tokens(int(size["users"]))
            idle = self.redis_idle(server)
            attempts = []
            for attempt in range(int(size.get("retries", 2)) + 1):
                if attempt:
                    log(f"{name}: {server.target}: window disturbed "
                        f"({attempts[-1].get('disturbed')}); again")
                sent = self.upstream.stats()["tokens_sent"]
                attempts.append(run_loadgen(self.plan(server, scenario, **size, **extra),
                                            self.harness_cpu, size["deadline"] + 60))
                # What the upstream sent meanwhile, to check against what the clients counted.
                attempts[-1]["upstream_tokens_sent"] = self.upstream.stats()["tokens_sent"] - sent
                if not attempts[-1].get("disturbed"):
                    break
            result = min(attempts, key=lambda a: (bool(a.get("disturbed")),
                                                  _get(a, "cpu", "foreign_cpu_util") or 0))
            result["attempts"] = len(attempts)
            result["other_attempts"] = [a for a in attempts if a is not result]
            result["upstream_after"] = self.upstream.stats()
            if idle and result.get("redis") and "cpu_s" in result["redis"]:
                result["redis"].update(_net_of_idle(result["redis"], idle, size["window"]))
            return result
        return fn

    def redis_idle(self, server: Server, seconds: float = REDIS_IDLE_SECONDS) -> dict:
        """Redis's CPU with the service up and no request, over ``seconds``: its fixed cost
        (cron, the worker's heartbeat), to tell from what each token costs. Empty when the
        server does not use the bench's Redis."""
        plan = self.plan(server, "idle")
        if "redis_port" not in plan:
            return {}
        before, began = sample.redis_info(plan["redis_port"]), time.monotonic()
        time.sleep(seconds)
        after, elapsed = sample.redis_info(plan["redis_port"]), time.monotonic() - began
        spent = (after["used_cpu_sys"] + after["used_cpu_user"]
                 - before["used_cpu_sys"] - before["used_cpu_user"])
        return {"seconds": elapsed, "cpu_s_per_s": spent / elapsed}

    def ramp(self, server: Server) -> dict:
        size = self.sizes["ramp"]
        result = run_loadgen(self.plan(server, "ramp", **size), self.harness_cpu,
                             size["deadline"] + 60)
        result["upstream_after"] = self.upstream.stats()
        return result

    def floor(self) -> dict:
        """The harness alone: the load generator straight against the upstream, no relay.

        What latency the measuring itself adds (two loopback hops fewer than a relayed token,
        same parsing), so that a relay's figure can be read against it.
        """
        size = dict(self.sizes["latency"], window=min(5, self.sizes["latency"]["window"]))
        plan = {"port": self.upstream.port, "kind": "upstream", "scenario": "steady",
                "upstream_pid": self.upstream.pid, **size}
        self.wait_quiet()
        return run_loadgen(plan, self.harness_cpu, size["deadline"] + 60)

    def profile(self, max_tps: float | None) -> dict:
        """py-spy on the service's worker under a steady token load (not part of the table)."""
        spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        if not Path(spy).exists():
            return {"error": "py-spy not found (pip install py-spy)"}
        seconds = float(self.args.profile)
        if self.args.profile_load:
            streams, rate = (float(n) for n in self.args.profile_load.lower().split("x"))
            streams = int(streams)
        else:
            rate = 50.0
            tps = 0.8 * max_tps if max_tps else 10_000
            streams = max(40, int(tps / rate))
        if getattr(self.args, "profile_tls", False):
            self.upstream = self.https_upstream()
        server = self.start_server("service", "profile")
        try:
            worker = server.worker_pid()
            raw = RESULTS / f"{self.stamp}-profile.txt"
            plan = self.plan(server, "steady", streams=streams, rate=rate,
                             stagger=max(1.0, streams / 100), warmup=2, window=seconds + 3,
                             deadline=seconds + 120)
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(plan, f)
            load = subprocess.Popen([PY, str(BENCH / "loadgen.py"), "--plan", "@" + f.name],
                                    cwd=ROOT, stdout=subprocess.PIPE,
                                    preexec_fn=pinned(self.harness_cpu))
            time.sleep(plan["stagger"] + 2)
            log(f"profile: py-spy on worker {worker} for {seconds:g} s at {streams} streams x "
                f"{rate:g} tokens/s")
            subprocess.run([spy, "record", "-p", str(worker), "-d", str(int(seconds)),
                            "-r", "97", "-f", "raw", "-o", str(raw), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=pinned(self.harness_cpu), timeout=seconds + 60)
            out, _ = load.communicate(timeout=seconds + 120)
            os.unlink(f.name)
            summary = summarize_profile(raw)
            with contextlib.suppress(ValueError, IndexError):
                run = json.loads(out.decode().strip().splitlines()[-1])
                summary["load"] = {k: run.get(k) for k in ("streams", "rate", "delivered_tps",
                                                           "server_cpu_us_per_token")}
                summary["load"]["latency"] = run.get("latency")
            return summary
        finally:
            self.upstream.reset()
            server.stop()

    def scrape(self, server: Server) -> dict:
        """/healthz latency idle and while a /metrics scrape is in flight, and the scrape's
        duration, while the load generator holds ``streams`` open streams on the worker."""
        size = self.sizes["scrape"]
        tmp = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
        ready, release = tmp / "ready", tmp / "release"
        keys = ("rate", "open_rate", "settle", "plateau_timeout", "answer_wait", "max_inflight",
                "inflight_age", "settle_cpu", "settle_max", "linger", "deadline")
        plan = self.plan(server, "hold", plateaus=[size["streams"]], ready_file=str(ready),
                         release_file=str(release), **{k: size[k] for k in keys if k in size})
        plan_path = tmp / "plan.json"
        plan_path.write_text(json.dumps(plan))
        load = subprocess.Popen([PY, str(BENCH / "loadgen.py"), "--plan", f"@{plan_path}"],
                                cwd=ROOT, stdout=subprocess.PIPE,
                                preexec_fn=pinned(self.harness_cpu))
        result: dict = {"streams": size["streams"]}
        try:
            deadline = time.monotonic() + size["deadline"]
            while not ready.exists():
                if load.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the load generator did not hold the streams")
                time.sleep(0.2)
            result["held"] = json.loads(ready.read_text())
            log(f"scrape: greenlet gauge {server.env.get('AXRISI_GREENLET_GAUGE')}: "
                f"{result['held']['open']:,} streams open, "
                f"{result['held']['receiving']:,} receiving; measuring")
            result.update(probe_scrapes(server, size))
        finally:
            out = _hand_back(load, release, tmp, size["deadline"] + 60)
        with contextlib.suppress(ValueError, IndexError):
            run = json.loads(out.decode().strip().splitlines()[-1])
            result["handoff"] = run.get("handoff")
            result["plateau_snapshot"] = ((run.get("plateaus") or [{}])[-1]).get("snapshot")
        result["upstream_after"] = self.upstream.stats()
        return result

    def soak(self, server: Server) -> dict:
        """Long streams held for minutes while /metrics is scraped as Prometheus does: the
        load generator measures the gaps between each stream's tokens; the runner scrapes and
        reads the worker's GC pauses (``axrisi_gc_pause_seconds``) from each scrape."""
        size = self.sizes["soak"]
        tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
        ready, release = tmp / "ready", tmp / "release"
        plan = self.plan(server, "soak", ready_file=str(ready), release_file=str(release),
                         **size)
        plan_path = tmp / "plan.json"
        plan_path.write_text(json.dumps(plan))
        load = subprocess.Popen([PY, str(BENCH / "loadgen.py"), "--plan", f"@{plan_path}"],
                                cwd=ROOT, stdout=subprocess.PIPE,
                                preexec_fn=pinned(self.harness_cpu))
        measured: dict = {}
        out = b""
        try:
            deadline = time.monotonic() + sum(size[k] for k in ("open_timeout", "answer_wait",
                                                                  "settle")) + 30
            while not ready.exists():
                if load.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the load generator did not open the streams")
                time.sleep(0.02)  # the first scrape reads the GC pauses at the hold's start
            held = json.loads(ready.read_text())
            log(f"soak: {held['receiving']:,} of {held['requested']:,} streams receiving; "
                f"holding {size['hold']:g} s, /metrics every {size['scrape_every']:g} s")
            measured["scrapes"] = scrape_through(server, held["t0_ns"], size, load)
        finally:
            out = _hand_back(load, release, tmp, size["deadline"] + 30)
        try:
            result = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"error": f"the load generator printed no result (exit {load.returncode})"}
        result.update(measured)
        if "t0_ns" in result:  # the warm-up's finished streams expire a resume TTL after this
            result["warmup_ended_s"] = round((self.warmed_ns - result["t0_ns"]) / 1e9, 1)
        result["scrape_ms"] = _ms_dist([x["ms"] for x in measured["scrapes"] if "ms" in x])
        result["gc"] = gc_summary(measured["scrapes"])
        result["upstream_after"] = self.upstream.stats()
        return result

    def held(self, server: Server, name: str = "held") -> dict:
        size = self.sizes[name]
        result = run_loadgen(self.plan(server, "held", **size), self.harness_cpu,
                             size["deadline"] + 60)
        result["upstream_after"] = self.upstream.stats()
        return result

    def stalled(self, server: Server) -> dict:
        """Readers that stop reading; the upstream's close records tell when each was dropped."""
        size = self.sizes["stalled"]
        result = run_loadgen(self.plan(server, "stalled", upstream_port=self.upstream.port,
                                       **size), self.harness_cpu, size["deadline"] + 60)
        result["upstream_after"] = self.upstream.stats()
        return result

    def cancel(self, server: Server) -> dict:
        size = self.sizes["cancel"]
        worker = server.worker_pid()
        before = {"upstream": self.upstream.stats(), "metrics": server.metrics(),
                  "worker": sample.process(worker) if worker else None}
        result = run_loadgen(self.plan(server, "cancel", **size), self.harness_cpu,
                             size["deadline"] + 60)
        time.sleep(size["settle"])
        upstream = self.upstream.closes()
        after = {"upstream": {k: v for k, v in upstream.items()
                              if k not in ("closes", "active", "seen")},
                 "metrics": server.metrics(),
                 "worker": sample.process(worker) if worker else None}
        client_closes = result.pop("closes", {})
        modes = result.pop("modes", {})
        active = set(upstream["active"])
        seen = set(upstream.get("seen", ()))
        latencies: dict[str, list[float]] = {"all": [], "mid": [], "silent": []}
        leaked = {"all": 0, "mid": 0, "silent": 0}
        never_sent = 0
        for tag, t_client in client_closes.items():
            mode = modes.get(tag, "?")
            t_up = upstream["closes"].get(tag)
            if t_up is None and tag not in seen:
                never_sent += 1  # the client left before its request reached the upstream
                continue
            if t_up is None:
                latency = math.inf  # the upstream never saw this stream's connection close
                leaked["all"] += 1
                leaked[mode] = leaked.get(mode, 0) + 1
            else:
                latency = (t_up - t_client) / 1e6
            latencies["all"].append(latency)
            latencies.setdefault(mode, []).append(latency)
        result["cancel_ms"] = {mode: _dist(values) for mode, values in latencies.items()}
        result["leaked_upstream_streams"] = leaked
        result["still_active_upstream"] = len(active)
        result["never_reached_upstream"] = never_sent
        result["before"], result["after"] = before, after
        result["client_closed"] = len(client_closes)
        return result

    # --- the run

    def run(self) -> dict:
        machine = machine_info(self.service_dir)
        log("machine: " + machine["summary"])
        self.plain_upstream.start()
        log(f"upstream on :{self.plain_upstream.port} (pid {self.plain_upstream.pid})")
        machine["service_dir"] = str(self.service_dir)
        machine["baseline"] = (
            "the service with " + " ".join(f"{k}={v}" for k, v in self.baseline_env.items())
            if self.baseline_env else "the naive relay (bench/naive_app.py)")
        results: dict = {"machine": machine, "quick": self.args.quick, "sizes": self.sizes,
                         "text_chars": self.args.text_chars,
                         "pinning": {"server_cpu": self.server_cpu,
                                     "harness_cpu": self.harness_cpu},
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        chosen = [s for s in SCENARIOS if not self.args.only or s in self.args.only]
        fns = {"hold": self.hold, "hold_tls": lambda server: self.hold(server, "hold_tls"),
               "cpu": self.steady("cpu"), "latency": self.steady("latency"),
               "ramp": self.ramp, "cancel": self.cancel,
               "turnover": self.steady("turnover", "closed_loop"),
               "turnover_tls": self.steady("turnover_tls", "closed_loop"),
               "turnover_redis": self.steady("turnover_redis", "closed_loop"),
               "turnover_tls_redis": self.steady("turnover_tls_redis", "closed_loop"),
               "real": self.steady("real", "closed_loop"),
               "real_tls": self.steady("real_tls", "closed_loop"),
               "requests": self.steady("requests", "closed_loop"),
               "held": self.held, "held_tls": lambda server: self.held(server, "held_tls"),
               "stalled": self.stalled, "scrape": self.scrape, "soak": self.soak}
        # The dropped streams' events are kept for a resume for AXRISI_RESUME_TTL_SECONDS (300
        # by default, within AXRISI_RESUME_MAX_MEMORY_MB): a short TTL shows whether the memory
        # comes back once they expire, `after` seconds after the readers left.
        envs = {"stalled": {"AXRISI_SEND_TIMEOUT_SECONDS":
                            f"{self.sizes['stalled']['send_timeout']:g}",
                            "AXRISI_RESUME_TTL_SECONDS":
                            f"{self.sizes['stalled']['resume_ttl']:g}"},
                # A held stream's upstream is silent after its answer, on purpose: the
                # service's upstream read timeout (60 s by default) must not end it meanwhile.
                "held": {"AXRISI_UPSTREAM_TIMEOUT_SECONDS":
                         f"{self.sizes['held']['hold'] + 60:g}"}}
        t0 = time.monotonic()
        try:
            if not self.args.no_floor:
                log("floor: the load generator straight against the upstream")
                results["floor"] = self.floor()
            for index, name in enumerate(chosen):
                twin = plain_twin(name)  # a TLS scenario runs as its plain twin does
                try:
                    self.upstream = (self.https_upstream() if name in TLS_TWINS
                                     else self.plain_upstream)
                    runs = (self.redis_runs() if twin == "turnover_redis" else
                            self.scrape_runs() if twin == "scrape" else
                            self.soak_runs() if twin == "soak" else None)
                except (OSError, RuntimeError, ValueError) as error:
                    log(f"{name}: skipped: {error}")
                    results[name] = {"error": str(error)}
                    continue
                results[name] = self.each_target(index, name, fns[name], envs.get(twin), runs)
                results[name]["upstream"] = self.upstream.url
            self.upstream = self.plain_upstream
            if self.tls_upstream is not None:
                results["tls"] = {"upstream": self.tls_upstream.url,
                                  "cert_file": str(self.tls_upstream.cert_file),
                                  "key": "ECDSA P-256, self-signed (bench/tlscert.py)",
                                  "trusted_through": "SSL_CERT_FILE"}
            if self.args.profile:
                results["profile"] = self.profile(_get(results, "ramp", "service", "max_tps"))
        finally:
            self.plain_upstream.stop()
            if self.tls_upstream is not None:
                self.tls_upstream.stop()
            if self.redis is not None:
                self.redis.stop()
                results["pinning"]["redis_cpu"] = self.redis_cpu
        results["elapsed_s"] = time.monotonic() - t0
        results["table"] = table(results)
        return results


def _hand_back(load: subprocess.Popen, release: Path, tmp: Path, timeout: float) -> bytes:
    """Release a load generator held at its plateau and take its output (killed when it does
    not end within ``timeout``); the hand-off's directory goes."""
    release.touch()
    try:
        out, _ = load.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        load.kill()
        out, _ = load.communicate()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _timed_get(conn: http.client.HTTPConnection, path: str, headers: dict) -> tuple:
    """One GET on a keep-alive connection: (milliseconds to the body's end, body)."""
    t0 = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    ms = (time.perf_counter() - t0) * 1000
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}")
    if response.will_close:
        conn.close()  # http.client opens a fresh connection for the next request
    return ms, body


def probe_scrapes(server: Server, size: dict) -> dict:
    """/healthz idle (sequential GETs on one keep-alive connection), /metrics scrapes alone,
    then scrapes each with a /healthz sent ``probe_delay_ms`` after the scrape's request went
    out (the scrape in a thread, on its own connection)."""
    host, port = "127.0.0.1", server.port
    token = server.env.get("AXRISI_METRICS_TOKEN")
    scrape_headers = {"Authorization": f"Bearer {token}"} if token else {}
    health = http.client.HTTPConnection(host, port, timeout=30)
    scraper = http.client.HTTPConnection(host, port, timeout=60)
    try:
        _timed_get(health, "/healthz", {})  # the connection's first request, not counted
        idle = []
        for _ in range(int(size["healthz"])):
            idle.append(_timed_get(health, "/healthz", {})[0])
            time.sleep(0.02)
        alone, body = [], b""
        for _ in range(int(size["scrapes"])):
            ms, body = _timed_get(scraper, "/metrics", scrape_headers)
            alone.append(ms)
            time.sleep(0.3)
        # Fresh connections (a keep-alive one idle for gunicorn's keepalive is closed by it),
        # the probe's warmed by one GET not counted.
        health.close()
        scraper.close()
        _timed_get(health, "/healthz", {})
        during, paired, overlapped = [], [], 0
        for _ in range(int(size["scrapes"])):
            sent, done = threading.Event(), {}
            thread = threading.Thread(target=_scrape_once, daemon=True,
                                      args=(scraper, scrape_headers, sent, done))
            thread.start()
            sent.wait(30)
            time.sleep(float(size["probe_delay_ms"]) / 1000)
            t_probe = time.perf_counter()
            during.append(_timed_get(health, "/healthz", {})[0])
            thread.join(60)
            if "ms" in done:
                paired.append(done["ms"])
                overlapped += t_probe < done["end"]
            time.sleep(0.3)
    finally:
        health.close()
        scraper.close()
    text = body.decode("utf-8", "replace")
    return {"healthz_idle_ms": _ms_dist(idle), "scrape_ms": _ms_dist(alone),
            "scrape_with_probe_ms": _ms_dist(paired), "healthz_during_ms": _ms_dist(during),
            "probes_sent_before_scrape_ended": overlapped,
            "metrics_bytes": len(body),
            "greenlet_gauge_exposed": re.search(r"^axrisi_greenlets\b", text, re.M) is not None}


def _scrape_once(conn: http.client.HTTPConnection, headers: dict, sent: threading.Event,
                 done: dict) -> None:
    """One /metrics GET; ``sent`` is set once the request is written, ``done`` gets its end."""
    t0 = time.perf_counter()
    conn.request("GET", "/metrics", headers=headers)
    sent.set()
    response = conn.getresponse()
    response.read()
    done["end"] = time.perf_counter()
    done["ms"] = (done["end"] - t0) * 1000
    if response.will_close:
        conn.close()


def scrape_through(server: Server, t0_ns: int, size: dict,
                   load: subprocess.Popen) -> list[dict]:
    """``GET /metrics`` at the hold's start ``t0_ns`` (the shared monotonic clock), then every
    ``scrape_every`` s, the last at ``t0 + hold``: each on a fresh connection, as Prometheus
    does (gunicorn's keepalive is shorter than the interval). Per scrape: when (s since t0),
    how long (request written -> body read) and the GC histogram in it."""
    every, hold = float(size["scrape_every"]), float(size["hold"])
    marks = [k * every for k in range(int(hold // every) + 1)]
    if marks[-1] < hold:
        marks.append(hold)
    token = server.env.get("AXRISI_METRICS_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    scrapes: list[dict] = []
    for mark in marks:
        wait = (t0_ns + mark * 1e9 - time.monotonic_ns()) / 1e9
        if wait > 0:
            time.sleep(wait)
        if load.poll() is not None:
            scrapes.append({"t_s": mark, "error": "the load generator exited"})
            break
        at = (time.monotonic_ns() - t0_ns) / 1e9
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            ms, body = _timed_get(conn, "/metrics", headers)
            scrapes.append({"t_s": round(at, 3), "ms": ms,
                            "gc": gc_pauses(body.decode("utf-8", "replace"))})
        except (OSError, RuntimeError, http.client.HTTPException) as error:
            scrapes.append({"t_s": round(at, 3), "error": repr(error)[:200]})
        finally:
            conn.close()
    return scrapes


_GC_SAMPLE = re.compile(r"^axrisi_gc_pause_seconds_(bucket|count|sum)\{([^}]*)\}\s+(\S+)", re.M)


def gc_pauses(text: str) -> dict:
    """``axrisi_gc_pause_seconds`` in a scrape: per generation its count, sum and cumulative
    buckets (``le`` as the scrape writes it); {} when the service has no such histogram."""
    out: dict = {}
    for kind, labels, value in _GC_SAMPLE.findall(text):
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        gen = out.setdefault(lab.get("generation", "?"), {"count": 0.0, "sum": 0.0,
                                                          "buckets": {}})
        if kind == "bucket":
            gen["buckets"][lab.get("le", "?")] = float(value)
        else:
            gen[kind] = float(value)
    return out


def gc_summary(scrapes: list[dict]) -> dict:
    """The GC pauses between the first and the last scrape that read the histogram: per
    generation the count, the sum and the bucket the largest pause fell in (``[lower, upper]``
    seconds); and per scrape interval the full (generation-2) collections, to line up with
    the gaps' seconds."""
    good = [x for x in scrapes if x.get("gc")]
    if len(good) < 2:
        return {"error": "axrisi_gc_pause_seconds was not read at the hold's start and end"}
    first, last = good[0], good[-1]
    out: dict = {"from_s": first["t_s"], "to_s": last["t_s"], "generations": {}}
    for gen, end in sorted(last["gc"].items()):
        start = first["gc"].get(gen) or {"count": 0.0, "sum": 0.0, "buckets": {}}
        count = end["count"] - start["count"]
        cumulative = sorted((float(le), n - start["buckets"].get(le, 0.0))
                            for le, n in end["buckets"].items())
        largest, lower = None, 0.0
        for upper, n in cumulative:
            if count and n >= count:
                largest = [lower, upper]
                break
            lower = upper
        out["generations"][gen] = {"count": int(count), "sum_s": end["sum"] - start["sum"],
                                   "largest_bucket_s": largest}
    out["full_by_interval"] = [
        {"from_s": a["t_s"], "to_s": b["t_s"],
         "count": int(_get(b, "gc", "2", "count", default=0)
                      - _get(a, "gc", "2", "count", default=0)),
         "sum_s": _get(b, "gc", "2", "sum", default=0) - _get(a, "gc", "2", "sum", default=0)}
        for a, b in zip(good, good[1:], strict=False)]
    return out


def _ms_dist(values: list[float]) -> dict:
    s = sorted(values)
    return {"n": len(s), "p50_ms": percentile(s, 0.5), "p99_ms": percentile(s, 0.99),
            "max_ms": s[-1] if s else None}


def _cpu_or_zero(pid: int) -> float:
    try:
        return sample.cpu_seconds(pid)
    except OSError:
        return 0.0


def _dist(values: list[float]) -> dict:
    s = sorted(values)
    out = {"n": len(s), "leaked": sum(1 for v in s if v == math.inf)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        v = percentile(s, q)
        out[name] = None if v is None else (v if v != math.inf else "inf")
    finite = [v for v in s if v != math.inf]
    out["max_finite"] = finite[-1] if finite else None
    return out


def percentile(sorted_values: list, q: float):
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def mint_token(secret: str, user: str = "bench") -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "nbf": now, "exp": now + 6 * 3600,
                       "jti": secrets.token_hex(8), "type": "access", "fresh": False},
                      secret, algorithm="HS256")


# --------------------------------------------------------------------------------------------
# Profile summary
# --------------------------------------------------------------------------------------------


def summarize_profile(raw: Path, top: int = 15) -> dict:
    """Self and inclusive sample shares per frame from py-spy's collapsed-stack output."""
    if not raw.exists():
        return {"error": "no profile written"}
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    file_counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
        for frame in set(frames):
            incl_counts[frame] = incl_counts.get(frame, 0) + n
        m = re.search(r"\(([^)]*?)(?::\d+)?\)$", frames[-1])
        where = m.group(1) if m else frames[-1]
        where = re.sub(r".*/site-packages/", "", where)
        where = re.sub(r".*/lib/python3\.\d+/", "stdlib/", where)
        area = where.split("/")[0] if "/" in where else where
        file_counts[area] = file_counts.get(area, 0) + n

    def ranked(counts: dict[str, int]) -> list:
        items = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [[frame, round(100 * c / total, 1)] for frame, c in items]

    return {"samples": total, "self_top": ranked(self_counts),
            "inclusive_top": ranked(incl_counts), "by_package_self": ranked(file_counts),
            "raw": str(raw)}


# --------------------------------------------------------------------------------------------
# Machine, table
# --------------------------------------------------------------------------------------------


def machine_info(service_dir: Path = ROOT) -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions = {}
    for dist in ("flask", "werkzeug", "gunicorn", "gevent", "greenlet", "openai", "httpx2",
                 "orjson", "flask-jwt-extended", "pyjwt"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    commit = dirty = None
    if (service_dir / ".git").exists():  # read-only git queries
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=service_dir,
                                    text=True, capture_output=True, timeout=10).stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=service_dir, text=True, capture_output=True,
                                    timeout=10).stdout
            dirty = len(status.splitlines())
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    load = os.getloadavg()
    info = {
        "cpu_model": cpu, "cpus": os.cpu_count(), "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "versions": versions, "git_commit": commit, "git_modified_files": dirty,
        "nofile": list(nofile), "loadavg_at_start": [round(x, 2) for x in load],
    }
    info["summary"] = (f"{cpu}, {info['cpus']} CPUs, {info['mem_gib']} GiB, Linux "
                       f"{info['kernel']}, Python {info['python']}, gunicorn "
                       f"{versions['gunicorn']}, gevent {versions['gevent']}, openai "
                       f"{versions['openai']}, RLIMIT_NOFILE {nofile[0]}")
    return info


def raise_nofile(wanted: int) -> None:
    """Raise the open-files limit for this process and its children: the soft limit to the hard
    one, and both to ``wanted`` where we may (as root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _get(d: dict, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _per_stream_kb(hold: dict, requested: int) -> tuple[float | None, str]:
    plateaus = hold.get("plateaus") or []
    idle = _get(hold, "idle", "server", "pss_kb")
    for p in plateaus:
        if p["requested"] == requested and idle is not None:
            pss = _get(p, "snapshot", "server", "pss_kb")
            open_ = p["open"]
            if pss is None or not open_:
                return None, ""
            note = ""
            if p["receiving"] < open_:
                note = f"{p['receiving']} of {open_} receiving"
            return (pss - idle) / open_, note
    return None, ""


def table(results: dict) -> list[dict]:
    rows: list[dict] = []
    hold_sizes = results["sizes"]["hold"]["plateaus"]

    def row(figure, svc, base, target="", met=None, unit="", lower_better=True, note="",
            fmt="{:.1f}", ratio_ok=True):
        def show(v):
            if v is None:
                return "n/a"
            if isinstance(v, str):
                return v
            if v == math.inf:
                return "inf"
            return fmt.format(v) + unit
        ratio = None
        if ratio_ok and isinstance(svc, (int, float)) and isinstance(base, (int, float)) \
                and base not in (0, math.inf) and svc != math.inf:
            ratio = svc / base
        rows.append({"figure": figure, "service": show(svc), "baseline": show(base),
                     "ratio": "n/a" if ratio is None else f"{ratio:.2f}x",
                     "target": target, "met": "" if met is None else ("yes" if met else "NO"),
                     "note": note, "raw": {"service": svc if svc != math.inf else "inf",
                                           "baseline": base if base != math.inf else "inf"}})

    for name in ("turnover", "turnover_tls", "turnover_redis", "turnover_tls_redis", "real",
                 "real_tls"):
        if results.get(name):
            _closed_loop_rows(row, results, name)
        if plain_twin(name) == "turnover_redis" and results.get(name):
            _redis_rows(row, results, name)
    if results.get("requests"):
        _requests_rows(row, results)
    hold = results.get("hold")
    if hold:
        for n in hold_sizes[:2] if len(hold_sizes) > 2 else hold_sizes:
            s, s_note = _per_stream_kb(hold.get("service", {}), n)
            b, b_note = _per_stream_kb(hold.get("baseline", {}), n)
            big = n == max(hold_sizes[:2])
            row(f"memory per open stream at {n:,} streams (PSS growth / streams)", s, b,
                target="<= 20 KB" if big and n >= 5000 else "", unit=" KB",
                met=(s is not None and s <= 20) if big and n >= 5000 else None,
                note="; ".join(x for x in (s_note and "service: " + s_note,
                                           b_note and "baseline: " + b_note) if x))
        last = hold_sizes[-1]

        def held(t):
            plateaus = _get(hold, t, "plateaus") or []
            return plateaus[-1]["receiving"] if plateaus else None
        s, b = held("service"), held("baseline")
        row(f"most concurrent streams one worker holds (of {last:,} tried)", s, b,
            target=f">= {last:,}" if last >= 10000 else "", lower_better=False,
            met=(s is not None and s >= last) if last >= 10000 else None, fmt="{:,.0f}",
            note=_hold_note(hold))
    hold_tls = results.get("hold_tls")
    if hold_tls:
        for n in results["sizes"]["hold_tls"]["plateaus"]:
            s, s_note = _per_stream_kb(hold_tls.get("service", {}), n)
            b, b_note = _per_stream_kb(hold_tls.get("baseline", {}), n)
            row(f"memory per open stream at {n:,} streams, the upstream over HTTPS (hold_tls: "
                "PSS growth / streams)", s, b, target="<= 30 KB" if n >= 2000 else "",
                unit=" KB", met=(s is not None and s <= 30) if n >= 2000 else None,
                note="; ".join(x for x in (s_note and "service: " + s_note,
                                           b_note and "baseline: " + b_note) if x))
    for name in ("held", "held_tls"):
        if results.get(name):
            _held_rows(row, results, name)
    _tls_rows(row, results)
    cpu = results.get("cpu")
    if cpu:
        s = _get(cpu, "service", "server_cpu_us_per_token")
        b = _get(cpu, "baseline", "server_cpu_us_per_token")
        size = results["sizes"]["cpu"]
        met = None
        if s is not None and b is not None:
            met = s <= 30 and s * 3 <= b
        row(f"server CPU per relayed token ({size['streams']} streams x {size['rate']:g} "
            f"tokens/s)", s, b, target="<= 30 us and <= 1/3 baseline", unit=" us", met=met)
    ramp = results.get("ramp")
    if ramp:
        s = _get(ramp, "service", "max_tps")
        b = _get(ramp, "baseline", "max_tps")
        row("most tokens/s one worker relays with p99 <= 100 ms", s, b, lower_better=False,
            fmt="{:,.0f}", note=_ramp_note(ramp))
    lat = results.get("latency")
    if lat:
        size = results["sizes"]["latency"]
        load = f"{size['streams']} streams x {size['rate']:g} tokens/s"
        for q in ("p50", "p99"):
            s = _get(lat, "service", "latency", f"{q}_ms")
            b = _get(lat, "baseline", "latency", f"{q}_ms")
            is_target = q == "p99" and size["streams"] >= 200
            row(f"added relay latency {q} ({load})", s, b, unit=" ms", fmt="{:.2f}",
                target="<= 10 ms" if is_target else "",
                met=(s is not None and s <= 10) if is_target else None,
                note=_delivery_note(lat) if q == "p99" else "")
        for q in ("p50", "p99"):
            s = _get(lat, "service", "ttfb", f"{q}_ms")
            b = _get(lat, "baseline", "ttfb", f"{q}_ms")
            row(f"time to first byte {q} ({load})", s, b, unit=" ms", fmt="{:.2f}")
        for q in ("p50", "p99"):
            s = _get(lat, "service", "ttft", f"{q}_ms")
            b = _get(lat, "baseline", "ttft", f"{q}_ms")
            row(f"time to first token {q} ({load})", s, b, unit=" ms", fmt="{:.2f}")
    cancel = results.get("cancel")
    if cancel:
        n = results["sizes"]["cancel"]["streams"]
        for q in ("p50", "p99"):
            s = _num(_get(cancel, "service", "cancel_ms", "all", q))
            b = _num(_get(cancel, "baseline", "cancel_ms", "all", q))
            row(f"cancellation {q}: client close -> upstream close ({n:,} disconnects)", s, b,
                unit=" ms", fmt="{:.1f}", target="<= 100 ms" if q == "p99" else "",
                met=(s is not None and s <= 100) if q == "p99" else None,
                note="inf = upstream still open at the check" if q == "p99" else "")
        s = _get(cancel, "service", "leaked_upstream_streams", "all")
        b = _get(cancel, "baseline", "leaked_upstream_streams", "all")
        settle = results["sizes"]["cancel"]["settle"]
        row(f"leaked upstream streams {settle:g} s after {n:,} abrupt disconnects", s, b,
            target="0", met=s == 0 if s is not None else None, fmt="{:,.0f}",
            note=_leak_mode_note(cancel))

        def growth(t, where, key, scale=1):
            """after - before of one sample taken around the disconnects (None if missing)."""
            b0 = _get(cancel, t, "before", where, key)
            a0 = _get(cancel, t, "after", where, key)
            return None if b0 is None or a0 is None else (a0 - b0) / scale
        s, b = growth("service", "worker", "fds"), growth("baseline", "worker", "fds")
        row("worker open fds growth after the disconnects", s, b, target="0",
            met=s is not None and s <= 0, fmt="{:+,.0f}", ratio_ok=False)
        s, b = (growth("service", "upstream", "model_connections"),
                growth("baseline", "upstream", "model_connections"))
        row("open upstream connections growth after the disconnects", s, b, target="0",
            met=s is not None and s <= 0, fmt="{:+,.0f}", ratio_ok=False)
        s, b = (growth("service", "worker", "pss_kb", 1024),
                growth("baseline", "worker", "pss_kb", 1024))
        row("worker PSS drift after the disconnects", s, b, unit=" MiB", fmt="{:+.1f}",
            ratio_ok=False)
        for key in ("greenlets", "open_stream_slots", "open_streams"):
            def gauge_growth(t, key=key):
                before = _get(cancel, t, "before", "metrics") or {}
                after = _get(cancel, t, "after", "metrics") or {}
                if key in before and key in after:
                    return after[key] - before[key]
                return None
            s = gauge_growth("service")
            row(f"/metrics {key} growth after the disconnects", s, None, target="0",
                met=(s <= 0) if s is not None else None, fmt="{:+,.0f}", ratio_ok=False,
                note="" if s is not None else "the service has no such /metrics gauge yet "
                "(issue 6); hook: METRICS_GAUGES in bench/run.py")
    if results.get("scrape"):
        _scrape_rows(row, results)
    if results.get("soak"):
        _soak_rows(row, results)
    if results.get("stalled"):
        _stalled_rows(row, results)
    return rows


def _scrape_rows(row, results: dict) -> None:
    """scrape: what a /metrics scrape costs the worker's loop at many open streams. The
    baseline column is the same service with AXRISI_GREENLET_GAUGE=1 (the heap walk)."""
    d, size = results["scrape"], results["sizes"]["scrape"]
    n = f"{size['streams']:,} open streams at {size['rate']:g} tokens/s"
    vs = "(scrape; baseline column: the service with AXRISI_GREENLET_GAUGE=1, same run)"
    g = "service_gauge"

    def cell(t, key):
        v = [_get(d, t, key, q) for q in ("p50_ms", "p99_ms", "max_ms")]
        return None if None in v else " / ".join(f"{x:,.2f}" for x in v) + " ms"
    s, b = (_get(d, "service", "scrape_ms", "p50_ms"), _get(d, g, "scrape_ms", "p50_ms"))
    row(f"/metrics scrape duration p50 at {n}, request sent -> body read {vs}", s, b,
        target="< 5 ms", met=s is not None and s < 5, unit=" ms", fmt="{:.2f}",
        note=_scrape_note(d))
    row(f"/metrics scrape duration p50 / p99 / max ({size['scrapes']} scrapes alone)",
        cell("service", "scrape_ms"), cell(g, "scrape_ms"))
    row(f"/healthz latency idle p50 / p99 / max ({size['healthz']} sequential GETs, one "
        "keep-alive connection)", cell("service", "healthz_idle_ms"), cell(g, "healthz_idle_ms"))
    row(f"/healthz latency during a scrape p50 / p99 / max (sent {size['probe_delay_ms']:g} ms "
        f"after each of {size['scrapes']} scrapes)", cell("service", "healthz_during_ms"),
        cell(g, "healthz_during_ms"))

    def ratio(t):
        a, z = _get(d, t, "healthz_idle_ms", "p50_ms"), _get(d, t, "healthz_during_ms", "p50_ms")
        return None if not a or z is None else z / a
    s, b = ratio("service"), ratio(g)
    row("/healthz p50 during a scrape / idle p50", s, b, target="<= 2x",
        met=s is not None and s <= 2, unit="x", fmt="{:.2f}", ratio_ok=False)

    def worst(t):
        a, z = _get(d, t, "healthz_idle_ms", "p50_ms"), _get(d, t, "healthz_during_ms", "max_ms")
        return None if not a or z is None else z / a
    row("/healthz max during a scrape / idle p50", worst("service"), worst(g), unit="x",
        fmt="{:.2f}", ratio_ok=False)


def _soak_rows(row, results: dict) -> None:
    """soak (issue 26 items 2-3): the longest wait between two tokens of any stream, long
    streams held for minutes with scrapes running. The service only (no baseline column)."""
    d, size = results["soak"], results["sizes"]["soak"]
    r = d.get("service") or {}
    load = (f"{size['streams']:,} streams x {size['rate']:g} token/s held {size['hold']:g} s, "
            f"/metrics every {size['scrape_every']:g} s")
    gap = r.get("max_gap") or {}
    slow, worse = size["gap_ms"] / 1000, size["worse_gap_ms"] / 1000

    def secs(dist: dict, *keys: str):
        v = [dist.get(k) for k in keys]
        return None if None in v else " / ".join(f"{x / 1000:.2f}" for x in v) + " s"
    worst = gap.get("max_ms")
    row(f"soak: max gap between two tokens of any stream, p99.9 / max ({load})",
        secs(gap, "p999_ms", "max_ms"), None, target=f"max < {slow:g} s",
        met=worst is not None and worst < size["gap_ms"], note=r.get("error") or
        _soak_gap_note(r))
    row("soak: each stream's max gap, p50 / p99 (over the streams measured)",
        secs(gap, "p50_ms", "p99_ms"), None)
    n = r.get("streams_measured")
    row(f"soak: streams with a gap > {slow:g} s / > {worse:g} s (of the streams measured)",
        None if n is None else f"{r['streams_gap_over_slow']:,} / "
        f"{r['streams_gap_over_worse']:,} of {n:,}", None, note=_soak_seconds_note(r))
    early = r.get("early") or {}
    ended = sum(early.get(k, 0) for k in ("never_answered", "ended_before_hold",
                                          "ended_in_hold"))
    row("soak: streams that ended or errored before the hold's end (not answered, closed "
        "before or in the hold)", ended if early else None, None, target="0",
        met=bool(early) and ended == 0, fmt="{:,.0f}", ratio_ok=False,
        note="; ".join([f"{k.replace('_', ' ')} {v:,}" for k, v in early.items() if v]
                       + [f"{k.replace('_', ' ')} {r[k]}" for k in ("errors", "codes",
                                                                  "connect_errors")
                          if r.get(k)]))
    gc_ = r.get("gc") or {}
    full = _get(gc_, "generations", "2") or {}
    largest = full.get("largest_bucket_s")
    row("soak: full (generation-2) GC collections in the hold: count / sum / largest "
        "pause's bucket (axrisi_gc_pause_seconds at the hold's start and end)",
        None if not full else f"{full['count']:,} / {full['sum_s']:.3f} s / "
        + ("none" if largest is None else f"{largest[0]:g}-{largest[1]:g} s"), None,
        note=gc_.get("error") or _soak_gc_note(gc_))
    row(f"soak: /metrics scrape duration p50 / max ({_get(r, 'scrape_ms', 'n') or 0} scrapes "
        "in the hold, fresh connections)",
        _pair(d, "service", "scrape_ms", "p50", "max"), None,
        note="; ".join(f"t={x['t_s']:g} s: {x['error']}" for x in r.get("scrapes") or []
                       if x.get("error")))
    row("soak: relay latency p99.9 / max in the hold (receive time - upstream's send stamp)",
        _pair(d, "service", "latency", "p999", "max"), None, note=_soak_harness_note(r))


def _soak_gap_note(r: dict) -> str:
    if r.get("timed_out"):
        return "the load generator ran out of time (its deadline): no gaps measured"
    start = r.get("at_hold_start") or {}
    if not start:
        return ""
    return (f"{start.get('receiving', 0):,} of {r.get('requested', 0):,} streams receiving at "
            f"the hold's start (opened in {start.get('open_s', 0):.0f} s); "
            f"{r.get('tokens_in_hold', 0):,} tokens in the hold; the warm-up's streams ended at "
            f"t={r.get('warmup_ended_s', 0):g} s (their events expire a resume TTL later); "
            "per-second gap buckets: gap_seconds in the JSON")


def _soak_seconds_note(r: dict) -> str:
    """The seconds of the hold in which gaps over the limit ended: a pause of the relay is one
    moment for every stream; the most hit first."""
    buckets = r.get("gap_seconds") or {}
    top = sorted(buckets.items(), key=lambda kv: -kv[1]["over_slow"])[:8]
    bits = [f"t={k} s: {v['over_slow']:,} (max {v['max_ms'] / 1000:.2f} s)" for k, v in top]
    if len(buckets) > len(top):
        bits.append(f"{len(buckets) - len(top)} more seconds")
    if r.get("waiting_at_end_over_slow"):
        bits.append(f"{r['waiting_at_end_over_slow']:,} streams still waiting at the hold's "
                    "end (counted with the wait so far)")
    return ("gaps ended in second " + "; ".join(bits)) if bits else ""


def _soak_gc_note(gc_: dict) -> str:
    gens = gc_.get("generations") or {}
    bits = [f"gen {g}: {v['count']:,} ({v['sum_s']:.3f} s"
            + (f", largest {v['largest_bucket_s'][0]:g}-{v['largest_bucket_s'][1]:g} s)"
               if v.get("largest_bucket_s") else ")")
            for g, v in sorted(gens.items()) if g != "2"]
    when = [f"{x['from_s']:.0f}-{x['to_s']:.0f} s: {x['count']} ({x['sum_s']:.3f} s)"
            for x in gc_.get("full_by_interval") or [] if x["count"]]
    if when:
        bits.append("full collections by scrape interval: " + ", ".join(when))
    return "; ".join(bits)


def _soak_harness_note(r: dict) -> str:
    """Whether a gap could be the harness's own: the load generator's loop, the upstream."""
    bits = []
    lag = _get(r, "loop_lag", "max_ms")
    if lag is not None:
        bits.append(f"load generator loop lag max {lag:.0f} ms")
    late = r.get("loadgen_late_seconds") or {}
    if late:
        bits.append("its loop > 100 ms late in second " + ", ".join(
            f"t={k} s ({v:.0f} ms)" for k, v in list(late.items())[:8]))
    up = r.get("upstream_after") or {}
    if "lag_max_ms" in up:
        bits.append(f"upstream timers late by up to {up['lag_max_ms']:.0f} ms over the run "
                    f"({up.get('lag_over_10ms', 0):,} over 10 ms)")
    return "; ".join(bits)


def _scrape_note(d: dict) -> str:
    notes = []
    for t in ("service", "service_gauge"):
        r = d.get(t) or {}
        if r.get("error"):
            notes.append(f"{t}: FAILED: {r['error']}")
            continue
        held, after = r.get("held") or {}, r.get("handoff") or {}
        if held:
            notes.append(
                f"{t}: {held.get('open', 0):,} open, {held.get('receiving', 0):,} receiving "
                f"before; {after.get('receiving', 'n/a')} received a token in the "
                f"{after.get('held_s', 0):.0f} s of measuring; {r.get('metrics_bytes', 0):,} B "
                f"per scrape, axrisi_greenlets "
                f"{'exposed' if r.get('greenlet_gauge_exposed') else 'absent'}; "
                f"{r.get('probes_sent_before_scrape_ended', 0)} of "
                f"{_get(r, 'healthz_during_ms', 'n')} probes sent before their scrape ended")
    return " | ".join(notes)


def _pair(d: dict, t: str, key: str, a: str = "p50", b: str = "p99", unit: str = " ms") -> str:
    """'p50 / p99' of one distribution as a table cell (None when missing)."""
    x, y = _get(d, t, key, a + "_ms"), _get(d, t, key, b + "_ms")
    if x is None or y is None:
        return None
    return f"{x:,.2f} / {y:,.2f}{unit}"


def _both(d: dict, fn) -> tuple:
    return fn(d.get("service") or {}), fn(d.get("baseline") or {})


def _closed_loop_rows(row, results: dict, name: str) -> None:
    """turnover / real: CPU per token and per request with each request's work, latency."""
    d, size = results[name], results["sizes"][name]
    load = (f"{name}: {size['users']} users, a new connection and request per "
            f"{_span(size['tokens'])}-token answer at {_span(size['rate'])} tokens/s"
            + (", the upstream over HTTPS" if name in TLS_TWINS else ""))
    s, b = _both(d, lambda r: r.get("server_cpu_us_per_token"))
    row(f"server CPU per relayed token, per-request work included ({load})", s, b,
        target="<= 40 us", met=s is not None and s <= 40, unit=" us",
        note=_closed_loop_note(d))
    rate = size["rate"]
    offered = size["users"] * (sum(rate) / 2 if isinstance(rate, list) else rate)
    s, b = _both(d, lambda r: r.get("delivered_tps"))
    row(f"tokens/s delivered in the window ({name}; offered: {offered:,.0f}, {size['users']} "
        "users x their rate, less each user's gap between answers)", s, b, lower_better=False,
        fmt="{:,.0f}")
    s, b = _both(d, lambda r: r.get("server_cpu_ms_per_request_equiv"))
    row(f"server CPU per request-equivalent ({name}: per-token CPU x mean answer length)",
        s, b, unit=" ms", fmt="{:.2f}")
    s, b = _both(d, lambda r: f"{r['started_in_window']:,} / {r['completed_in_window']:,}"
                 if "started_in_window" in r else None)
    row(f"requests started / completed in the {size['window']:g} s window ({name})", s, b)
    for q in ("p50", "p99"):
        s, b = _both(d, lambda r, q=q: _get(r, "latency", f"{q}_ms"))
        target = q == "p99"
        row(f"relay latency {q} ({name})", s, b, unit=" ms", fmt="{:.2f}",
            target="<= 10 ms" if target else "",
            met=(s is not None and s <= 10) if target else None)
    row(f"relay latency p90 / p99.9 ({name})", _pair(d, "service", "latency", "p90", "p999"),
        _pair(d, "baseline", "latency", "p90", "p999"))
    row(f"time to first byte p50 / p99 ({name}, streams started in the window)",
        _pair(d, "service", "ttfb"), _pair(d, "baseline", "ttfb"))
    row(f"time to first token p50 / p99 ({name}, streams started in the window)",
        _pair(d, "service", "ttft"), _pair(d, "baseline", "ttft"))
    s, b = _both(d, lambda r: sum((r.get("errors") or {}).values()) if "errors" in r else None)
    row(f"streams that failed ({name}, the whole run)", s, b, target="0",
        met=s == 0 if s is not None else None, fmt="{:,.0f}", ratio_ok=False,
        note="; ".join(f"{t}: {_get(d, t, 'errors')}" for t in TARGETS
                       if _get(d, t, "errors")))
    s, b = _both(d, lambda r: r.get("server_pss_kb") and r["server_pss_kb"] / 1024)
    row(f"server PSS at the window's end ({name})", s, b, unit=" MiB")


def _redis_rows(row, results: dict, name: str = "turnover_redis") -> None:
    """turnover_redis (or turnover_tls_redis): what Redis itself spends per relayed token (its
    own INFO, read at the window's edges), beside what the relay spends with and without
    REDIS_URL in the same run. Here the baseline column is the service without REDIS_URL, not
    the naive relay."""
    d = results[name]
    r, local = d.get("service") or {}, d.get("service_no_redis") or {}
    red = r.get("redis") or {}
    why = d.get("error") or red.get("error") or r.get("error")
    row(f"Redis CPU per relayed token ({name}; Redis's INFO: used_cpu_sys + "
        "used_cpu_user over the window)", red.get("cpu_us_per_token"), None, unit=" us",
        note=why or _redis_cpu_note(r, red))
    by = red.get("commands_per_token_by_command") or {}
    idle = red.get("idle") or {}
    row(f"Redis CPU per relayed token, net of Redis's idle CPU ({name}; idle: the "
        f"{idle.get('seconds', REDIS_IDLE_SECONDS):.0f} s before the load, service up, no "
        "request)", red.get("cpu_us_per_token_net_of_idle"), None, unit=" us",
        note=f"idle: {idle['cpu_s_per_s'] * 1e3:.1f} ms/s" if idle else "")
    row(f"Redis commands per relayed token ({name}; INFO commandstats: every call, "
        "those a Lua script ran included)", red.get("commands_per_token"), None, fmt="{:.2f}",
        note="; ".join(f"{k} {v:.3f}" for k, v in list(by.items())[:8])
        + (f"; {red['scripts']:,} script calls" if red.get("scripts") else "")
        + (f"; {red['commands'] / r['completed_in_window']:,.0f} per request with its tokens "
           "(÷ requests completed in the window)"
           if red.get("commands") and r.get("completed_in_window") else "")
        + (f"; failed calls: {red['failed_calls']}" if red.get("failed_calls") else ""))
    vs = f"({name}; baseline column: the same service without REDIS_URL, same run)"
    row(f"server CPU per relayed token with REDIS_URL {vs}", r.get("server_cpu_us_per_token"),
        local.get("server_cpu_us_per_token"), unit=" us", note=local.get("error", ""))
    row(f"tokens/s delivered with REDIS_URL {vs}", r.get("delivered_tps"),
        local.get("delivered_tps"), lower_better=False, fmt="{:,.0f}")
    row(f"relay latency p50 / p99 with REDIS_URL {vs}", _pair(d, "service", "latency"),
        _pair(d, "service_no_redis", "latency"))


def _net_of_idle(red: dict, idle: dict, window_s: float) -> dict:
    """Redis's CPU per token less what it spent idle for as long as the window."""
    tokens = red.get("tokens") or 0
    if not tokens:
        return {"idle": idle}
    net = (red["cpu_s"] - idle["cpu_s_per_s"] * window_s) / tokens * 1e6
    return {"idle": idle, "cpu_us_per_token_net_of_idle": net}


def _redis_cpu_note(r: dict, red: dict) -> str:
    """The main thread's share, /proc's view of the same process, and Redis beside the relay."""
    notes = []
    if red.get("main_thread_cpu_us_per_token") is not None:
        notes.append(f"main thread {red['main_thread_cpu_us_per_token']:.1f} us")
    proc, tokens = _get(r, "cpu", "redis_cpu_s"), r.get("tokens_in_window")
    if proc is not None and tokens:
        notes.append(f"/proc: {proc / tokens * 1e6:.1f} us")
    relay = r.get("server_cpu_us_per_token")
    if relay and red.get("cpu_us_per_token") is not None:
        notes.append(f"{red['cpu_us_per_token'] / relay:.0%} of the relay's own CPU per token")
    if red.get("net_input_bytes_per_token") is not None:
        notes.append(f"{red['net_input_bytes_per_token']:.0f} B in, "
                     f"{red['net_output_bytes_per_token']:.0f} B out per token")
    return "; ".join(notes)


def _span(v) -> str:
    """A size as the table says it: '200', or '100-500' for a range drawn from."""
    return f"{v[0]:g}-{v[1]:g}" if isinstance(v, list) else f"{v:g}"


def _closed_loop_note(d: dict) -> str:
    """Where what the clients counted differs from what the upstream sent, or a drain failed."""
    notes = []
    for t in TARGETS:
        r = d.get(t) or {}
        got, sent = _get(r, "run", "tokens"), r.get("upstream_tokens_sent")
        if got is not None and sent is not None and got != sent:
            notes.append(f"{t}: clients counted {got:,} tokens, the upstream sent {sent:,}")
        if r.get("all_finished") is False:
            notes.append(f"{t}: streams still running after the window were cut")
        if (r.get("tokens_per_event") or 1) > 1.05:  # the relay batched tokens into events
            notes.append(f"{t}: {r['tokens_per_event']:.2f} tokens per event")
    return "; ".join(notes)


def _requests_rows(row, results: dict) -> None:
    """requests: what a request costs with (almost) no tokens, keep-alive clients."""
    d, size = results["requests"], results["sizes"]["requests"]
    load = f"{size['tokens']}-token answers, {size['users']} keep-alive clients back to back"
    s, b = _both(d, lambda r: r.get("server_cpu_ms_per_request"))
    notes = [f"{t}: {_get(d, t, 'reconnects'):,} requests went on a new connection after the "
             "server closed the previous one" for t in TARGETS if _get(d, t, "reconnects")]
    notes += [f"{t}: errors {_get(d, t, 'errors')}" for t in TARGETS if _get(d, t, "errors")]
    row(f"server CPU per request ({load})", s, b, target="<= 1 ms",
        met=s is not None and s <= 1, unit=" ms", fmt="{:.2f}", note="; ".join(notes))
    s, b = _both(d, lambda r: r.get("requests_per_s"))
    row(f"requests per second ({load})", s, b, lower_better=False, fmt="{:,.0f}")
    row("request latency p50 / p99 (requests: request sent -> terminal chunk)",
        _pair(d, "service", "request_ms"), _pair(d, "baseline", "request_ms"))


def _held_rows(row, results: dict, name: str = "held") -> None:
    """held (or held_tls): PSS per stream that holds a whole answer (events kept for resume)."""
    d, size = results[name], results["sizes"][name]
    s, b = _both(d, lambda r: r.get("pss_growth_kb_per_stream"))
    notes = ["no target: the <= 30 KB goal (issue 13) is for idle streams (the hold rows)"]
    for t in TARGETS:
        r = d.get(t) or {}
        if "open" in r:
            notes.append(f"{t}: {r['whole_answer']:,} of {r['requested']:,} held their whole "
                         f"answer ({r['open']:,} open), {r.get('tokens_per_event') or 0:.2f} "
                         f"tokens per event")
    where = f"{name}, the upstream over HTTPS" if name in TLS_TWINS else name
    row(f"memory per stream holding a {size['tokens']}-token answer at {size['streams']:,} "
        f"streams ({where}: PSS growth / streams)", s, b, unit=" KB", note="; ".join(notes))


def _tls_rows(row, results: dict) -> None:
    """The production configuration beside the plain path (issue 23): each TLS scenario's
    figure over its plain twin's, for the service and for the naive relay, both measured in
    the same run. Here the service column is over HTTPS and the baseline column over plain
    HTTP; the ratio is what TLS to the upstream costs."""
    figures = (("held", "memory per held stream", "pss_growth_kb_per_stream", " KB", "{:.1f}"),
               ("turnover", "server CPU per relayed token", "server_cpu_us_per_token", " us",
                "{:.1f}"),
               ("turnover_redis", "server CPU per relayed token with REDIS_URL",
                "server_cpu_us_per_token", " us", "{:.1f}"),
               ("real", "server CPU per relayed token", "server_cpu_us_per_token", " us",
                "{:.1f}"),
               ("turnover", "relay latency p99", ("latency", "p99_ms"), " ms", "{:.2f}"))
    for tls, plain in TLS_TWINS.items():
        if not (results.get(tls) and results.get(plain)):
            continue
        for twin, what, key, unit, fmt in figures:
            if twin != plain:
                continue
            path = key if isinstance(key, tuple) else (key,)
            for target in TARGETS:
                if twin == "turnover_redis" and target == "baseline":
                    continue  # the naive relay has no Redis: its run there is turnover's
                who = "the service" if target == "service" else "the baseline"
                row(f"{what}, {who}: over HTTPS ({tls}, service column) / over plain HTTP "
                    f"({plain}, baseline column), same run",
                    _get(results, tls, target, *path), _get(results, plain, target, *path),
                    unit=unit, fmt=fmt)


def _stalled_rows(row, results: dict) -> None:
    """stalled: how soon a reader that stopped reading is dropped, and what it costs meanwhile."""
    d, size = results["stalled"], results["sizes"]["stalled"]
    load = (f"{size['streams']} readers stop reading, {size['rate']:g} tokens/s x "
            f"{size['pad']:,} B, send timeout {size['send_timeout']:g} s")
    for q in ("p50", "p99", "max"):
        def drop(r, q=q):
            v = _get(r, "drop_ms", f"{q}_ms")
            if r.get("never_dropped") and q == "max":
                return math.inf
            return v / 1000 if v is not None else None
        s, b = _both(d, drop)
        limit = q == "max"
        row(f"stalled reader dropped {q}: stop reading -> upstream closed ({load})", s, b,
            unit=" s", fmt="{:.1f}", target="<= 6 s" if limit else "",
            met=(s is not None and s <= 6) if limit else None,
            note=f"inf: some never dropped within {size['drop_deadline']:g} s" if limit else "")
    s, b = _both(d, lambda r: r.get("never_dropped"))
    row(f"stalled readers not dropped within {size['drop_deadline']:g} s", s, b, target="0",
        met=s == 0 if s is not None else None, fmt="{:,.0f}", ratio_ok=False,
        note=_stalled_note(d))

    def trio(r, key):
        v = [_get(r, w, key) for w in ("before", "peak", "after")]
        return None if None in v else " / ".join(f"{x / 1024:,.0f}" for x in v) + " MiB"
    s, b = _both(d, lambda r: trio(r, "worker_pss_kb"))
    row(f"worker PSS before / peak / {size['after']:g} s after the stalled readers left "
        f"(events kept {size['resume_ttl']:g} s for resume)", s, b)

    def back(r):
        a, z = _get(r, "before", "worker_pss_kb"), _get(r, "after", "worker_pss_kb")
        return None if not a or z is None else 100 * (z - a) / a
    s, b = _both(d, back)
    row("worker PSS after the stalled readers left, vs before", s, b, unit=" %", fmt="{:+.0f}",
        target="within 10 %", met=s is not None and abs(s) <= 10, ratio_ok=False)
    s, b = _both(d, lambda r: trio(r, "tcp_mem_kb"))
    row("kernel TCP memory before / peak / after (whole machine, /proc/net/sockstat)", s, b)


def _stalled_note(d: dict) -> str:
    """What else happened to the stalled readers: never stalled, or the worker replaced (then
    its drops are that restart, and its PSS after is a fresh worker's)."""
    notes = []
    for t in TARGETS:
        r = d.get(t) or {}
        if "stalled" in r and r["stalled"] < r["streams"]:
            notes.append(f"{t}: {r['streams'] - r['stalled']} of {r['streams']} never got to "
                         f"stop reading (no first byte yet, or closed first: {r.get('errors')})")
        pids = [_get(r, w, "worker_pid") for w in ("before", "after")]
        if None not in pids and pids[0] != pids[1]:
            notes.append(f"{t}: its worker was replaced during the run (gunicorn killed it: see "
                         "its log), which closed every stream")
    return "; ".join(notes)


def _num(v):
    if v == "inf":
        return math.inf
    return v


def _hold_note(hold: dict) -> str:
    notes = []
    for t in TARGETS:
        plateaus = _get(hold, t, "plateaus") or []
        if plateaus:
            last = plateaus[-1]
            bits = [f"{last['answered_200']:,} of {last['opened']:,} answered"]
            cores = last.get("server_cores_at_check")
            if cores is not None and cores >= 0.9:
                bits.append(f"worker still busy ({cores:.2f} cores) "
                            f"{last.get('settle_s', 0):.0f} s after the ramp")
            if last.get("errors"):
                bits.append("errors " + ", ".join(f"{k}: {v}" for k, v in last["errors"].items()))
            if last.get("connect_errors"):
                bits.append("connect " + ", ".join(
                    f"{k}: {v}" for k, v in last["connect_errors"].items()))
            if bits:
                notes.append(f"{t}: " + "; ".join(bits))
    return " | ".join(notes)


def _ramp_note(ramp: dict) -> str:
    notes = []
    for t in TARGETS:
        steps = _get(ramp, t, "steps") or []
        if not steps:
            continue
        last = steps[-1]
        why = "stopped" if not last.get("ok") else "last step passed"
        lag = _get(last, "loop_lag", "p99_ms")
        gen = _get(last, "cpu", "loadgen_cpu_util")
        notes.append(f"{t}: {why} at {last['offered_tps']:,.0f} offered, "
                     f"{(last['delivered_tps'] or 0):,.0f} delivered, p99 "
                     f"{last['latency']['p99_ms']} ms (loadgen CPU {gen or 0:.0%}, "
                     f"loop lag p99 {lag} ms)")
    return " | ".join(notes)


def _delivery_note(lat: dict) -> str:
    notes = []
    for t in TARGETS:
        offered = _get(lat, t, "offered_tps")
        delivered = _get(lat, t, "delivered_tps")
        if offered and delivered is not None and delivered < 0.95 * offered:
            notes.append(f"{t} delivered {delivered:,.0f} of {offered:,.0f} tokens/s")
    return "; ".join(notes)


def _leak_mode_note(cancel: dict) -> str:
    notes = []
    for t in TARGETS:
        leaked = _get(cancel, t, "leaked_upstream_streams")
        if leaked:
            notes.append(f"{t}: {leaked.get('mid', 0)} after tokens, "
                         f"{leaked.get('silent', 0)} before the first token")
        never = _get(cancel, t, "never_reached_upstream")
        if never:
            notes.append(f"{t}: {never} closed before the request reached the upstream "
                         "(not a leak; left out of the latencies)")
    return "; ".join(notes)


def render(rows: list[dict]) -> str:
    headers = ["figure", "service", "baseline", "ratio", "target", "met?"]
    keys = ["figure", "service", "baseline", "ratio", "target", "met"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]) for k in keys) + " |")
    notes = [f"- {r['figure']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        lines += ["", "Notes:"] + notes
    return "\n".join(lines)


def conditions(results: dict) -> list[str]:
    """One line per measured window: how much of the machine something else used meanwhile."""
    lines = []
    for name in SCENARIOS:
        for t in _get(results, name, "order") or TARGETS:
            r = _get(results, name, t)
            if not isinstance(r, dict):
                continue
            if r.get("error"):
                lines.append(f"- {name} / {t}: FAILED: {r['error']}")
                continue
            windows = r.get("steps") or [r]
            for i, w in enumerate(windows):
                cpu = w.get("cpu") or {}
                if "foreign_cpu_util" not in cpu:
                    continue
                where = f"{name} / {t}" + (f" step {i}" if "steps" in r else "")
                lines.append(
                    f"- {where}: server {cpu.get('server_cpu_util', 0):.2f} cores, "
                    f"load generator {cpu.get('loadgen_cpu_util', 0):.2f}, upstream "
                    f"{cpu.get('upstream_cpu_util', 0):.2f}, "
                    + (f"redis-server {cpu['redis_cpu_util']:.2f}, " if "redis_cpu_util" in cpu
                       else "")
                    + "other processes "
                    f"{cpu.get('foreign_cpu_util', 0):.2f} (on the server's CPU "
                    f"{cpu.get('foreign_on_server_cpu_util', 0):.2f}), steal "
                    f"{cpu.get('steal_util', 0):.2f}; loop lag p99 "
                    f"{_get(w, 'loop_lag', 'p99_ms')} ms"
                    + (f"; attempts {w['attempts']}" if w.get("attempts", 1) > 1 else "")
                    + (f"; DISTURBED: {w['disturbed']}" if w.get("disturbed") else ""))
    return lines


def print_profile(prof: dict) -> None:
    if prof.get("error"):
        print(f"Profile: {prof['error']}")
        return
    load = prof.get("load") or {}
    print(f"Profile of the service's worker ({prof['samples']} samples, py-spy; load "
          f"{load.get('streams')} streams x {load.get('rate')} tokens/s, "
          f"{(load.get('delivered_tps') or 0):,.0f} tokens/s delivered):")
    print("  self time by package: " + ", ".join(
        f"{name} {share}%" for name, share in prof["by_package_self"][:10]))
    print("  top frames (self):")
    for frame, share in prof["self_top"][:12]:
        print(f"    {share:5.1f}%  {frame}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="every scenario at small sizes (a smoke run: about 10 minutes "
                             "on a 2-vCPU machine)")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS + tuple(PRESETS), default=None,
                        help="run only these scenarios (in the default's order); 'production' "
                        "is " + " ".join(PRESETS["production"]) + " (issue 23)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the servers and the harness to separate CPUs")
    parser.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                        help="at the end, py-spy record the service's worker this long under "
                        "a steady load at 80%% of its measured max tokens/s (needs py-spy)")
    parser.add_argument("--profile-load", metavar="STREAMSxRATE", default=None,
                        help="the profile's load, e.g. 100x20 (default: 80%% of the ramp's "
                             "best, in 50 tokens/s streams)")
    parser.add_argument("--profile-tls", action="store_true",
                        help="profile with the upstream over HTTPS (the production path)")
    parser.add_argument("--text-chars", type=int, default=0, metavar="N",
                        help="pad every request's page text to about N characters (default: "
                             "a short line), for memory per stream with real pages")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip measuring the harness alone (load generator -> upstream)")
    parser.add_argument("--quiet-wait", type=float, default=None, metavar="SECONDS",
                        help="before each target's turn, wait up to this long for other "
                        "processes to use under 0.3 cores (default 60; 0, no check, with "
                        "--quick)")
    parser.add_argument("--service-dir", metavar="DIR",
                        help="run the service from this checkout instead of this one (e.g. a "
                        "`git archive` of a commit); the baseline always runs from here")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra environment variable for both servers")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE",
                        help="A/B of a setting in one run: the baseline becomes the service "
                        "itself with this variable added (repeatable), instead of the naive "
                        "relay; the targets' 'baseline' conditions then do not apply")
    args = parser.parse_args(argv)
    if args.only:  # a preset stands for its scenarios
        args.only = [s for name in args.only for s in PRESETS.get(name, (name,))]
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 60.0
    raise_nofile(65536)  # 10,000 streams need 20,000+ descriptors (client + upstream)
    bench = Bench(args)
    results = bench.run()
    out = RESULTS / f"{bench.stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    m = results["machine"]
    print()
    print(f"Machine: {m['summary']}")
    code = (f"commit {m['git_commit']} + {m['git_modified_files']} modified tracked files"
            if m["git_commit"] else "not a git checkout")
    print(f"Service: {m['service_dir']} ({code}); "
          f"pinning: servers on CPU {bench.server_cpu}, upstream + load generator on CPU "
          f"{bench.harness_cpu}"
          + (f", redis-server on CPU {bench.redis_cpu}" if bench.redis is not None else "")
          + f"; {'quick' if args.quick else 'full'} run, "
          f"{results['elapsed_s']:.0f} s; page text per request: "
          f"{f'{args.text_chars:,} characters' if args.text_chars else 'one short line'}")
    print(f"Baseline: {m['baseline']}")
    floor = results.get("floor")
    if floor and not floor.get("error"):
        print(f"Harness floor (load generator straight to the upstream, {floor['streams']} streams "
              f"x {floor['rate']:g} tokens/s, no relay): latency p50 "
              f"{floor['latency']['p50_ms']} ms, p99 {floor['latency']['p99_ms']} ms")
    print()
    print(render(results["table"]))
    print()
    print("Measurement windows (cores used; 'other processes' is the machine's noise):")
    print("\n".join(conditions(results)))
    print()
    prof = results.get("profile")
    if prof:
        print_profile(prof)
        print()
    print(f"Raw results: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
