"""gunicorn settings for Axrisi Stream: gevent workers sized for thousands of long streams.

Loaded by the gunicorn master before any worker forks, so it validates the environment first
(one sentence and exit 1 on a bad setting) and imports nothing that would import ``ssl`` before
gevent patches the workers (gunicorn #2177, #1566). With ``AXRISI_LOCAL_MODEL`` and no upstream,
the master starts the one model server before it forks the workers and stops it on exit
(``axrisi/modelserver.py``: child processes, a supervisor that restarts the server if it dies,
so nothing heavy is imported here).
"""

import gc
import glob
import os
import secrets
import sys
import tempfile

from axrisi.config import ConfigError, Settings

try:
    _settings = Settings.from_env()
except ConfigError as _error:
    sys.stderr.write(f"axrisi: {_error}\n")
    sys.exit(1)

_OWN_KEYS = not _settings.jwt_public_key and not _settings.jwt_jwks_url
"""The service signs its own tokens (HS256): only then can it mint one to try the API with."""

if _settings.development and not _settings.jwt_secret_key and _OWN_KEYS:
    # One secret for every worker of this run, inherited through fork.
    os.environ["JWT_SECRET_KEY"] = secrets.token_urlsafe(48)

# prometheus-client's multiprocess mode: every worker writes its samples to files here, and
# /metrics aggregates them. A fresh directory per run (or the operator's, emptied at start).
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    for _stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(_stale)
else:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="axrisi-metrics-")

# gevent records each greenlet's spawning greenlet and stack (a debugging aid): per stream that is
# two stack captures, about a kilobyte each and the CPU to take them. gevent's documented switch;
# set GEVENT_TRACK_GREENLET_TREE=true to have them back while debugging.
os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "false")

# Development mode mints a token for whoever opens its demo page, and that token spends the
# operator's model when a key or OPENAI_BASE_URL is set: it listens on loopback only. gunicorn
# applies GUNICORN_CMD_ARGS (and its command line) after this file, so `--bind` there still wins.
bind = f"{'127.0.0.1' if _settings.development else '0.0.0.0'}:{_settings.port}"
workers = _settings.web_concurrency
worker_class = "gevent"
# Open streams per worker are capped by AXRISI_MAX_STREAMS; leave room for short requests.
worker_connections = _settings.max_streams + 1000
# gevent workers only time out when the event loop is blocked; streams themselves are long.
timeout = 30
graceful_timeout = 60
keepalive = 5
# The control socket (~/.gunicorn/gunicorn.ctl) would clash between instances on one machine.
control_socket_disable = True
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
accesslog = None


def on_starting(server):
    """Before the workers fork (once: not again on a SIGHUP reload, which re-reads this file):
    one PING of REDIS_URL, and the model server when the settings ask for one."""
    from axrisi import modelserver, redischeck

    if _settings.redis_tls_unverified:
        server.log.warning("AXRISI_REDIS_TLS_VERIFY=0: the TLS certificate of Redis is not "
                           "verified (any certificate is accepted)")
    if _settings.redis_url:
        # In a child process (axrisi/redischeck.py): redis imports ssl, which must wait for
        # gevent in the workers. A wrong password, an untrusted certificate or the wrong
        # scheme for the port stops here; a Redis that is down does not.
        try:
            warning = redischeck.check_in_child(_settings.redis_url)
        except redischeck.RedisCheckError as error:
            sys.stderr.write(f"axrisi: {error}\n")
            sys.exit(1)
        if warning:
            server.log.warning(warning)
    try:
        modelserver.start_for(_settings)
    except modelserver.ModelServerError as error:
        sys.stderr.write(f"axrisi: {error}\n")
        sys.exit(1)


def on_exit(server):
    """The master is leaving: the model server goes too, and its supervisor stops restarting it
    (if the master is killed instead, the kernel ends both: PR_SET_PDEATHSIG)."""
    from axrisi import modelserver

    modelserver.stop_running()


def post_worker_init(worker):
    """Drain on SIGTERM; time the garbage collections; in development mode, print a token to try
    the API with (once)."""
    from axrisi.web import allow_direct_writes, services
    from axrisi.web.lifecycle import watch_worker
    from axrisi.web.ops import time_collections

    app = worker.wsgi
    watch_worker(worker, services(app).lifecycle)
    allow_direct_writes(app, worker.cfg)
    # What is loaded by now (modules, the SDK and its models, the app) lives as long as the
    # worker: take it out of the cyclic collector's scans, so that a full collection walks only
    # what the streams allocate. Measured (docs/benchmarks.md): the worst full-collection pause
    # at 200 streams x 50 tokens/s went from 75 ms to 14 ms.
    gc.freeze()
    # A young collection every 50,000 net container allocations, not 700. With REDIS_URL each
    # 0.2 s mirror tick builds one pipeline for every stream (thousands of short-lived tuples
    # and dicts alive across a round trip): at 700, collections ran mid-tick, promoted them,
    # and so triggered a full collection of every stream's objects about every 45 s (110 ms
    # each at 2,000 streams, every stream held). Measured (docs/benchmarks.md, soak with Redis):
    # 5 full collections, relay latency max 139 ms -> none, 20 ms; same memory. Cyclic garbage
    # waits at most 50,000 allocations longer.
    gc.set_threshold(50_000, 20, 100)
    # Every collection timed (axrisi_gc_pause_seconds): a full one holds every stream.
    time_collections()
    if not _settings.development or not _OWN_KEYS or worker.age != 1:
        return
    from axrisi.web.auth import mint_token

    with app.app_context():
        token = mint_token("dev")
    sys.stderr.write(
        "\nDevelopment mode: try it with\n"
        f"  export TOKEN={token}\n"
        f"  curl -N -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' "
        f"-d '{{\"command\": \"summarize\", \"text\": \"...\"}}' "
        f"http://127.0.0.1:{_settings.port}/api/run\n\n"
    )


def child_exit(server, worker):
    """Drop a dead worker's live gauges (what prometheus_client.multiprocess.mark_process_dead
    does; importing prometheus_client here would import ssl in the master, before gevent)."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for path in glob.glob(os.path.join(directory, f"gauge_live*_{worker.pid}.db")):
        os.remove(path)
