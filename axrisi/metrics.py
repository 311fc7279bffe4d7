"""Prometheus metrics, correct with several gunicorn workers (multiprocess mode).

``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers
fork; each worker writes its samples there and ``/metrics`` aggregates all of them. Metrics are
created once, at import, so that building the app twice (tests) does not register them twice.
Nothing here runs per token: streams are counted when they start and end.

``axrisi_gc_pause_seconds`` times every collection of the cyclic garbage collector (a
``gc.callbacks`` hook, :func:`watch_gc`, installed once per worker by ``gunicorn.conf.py``): a
full collection holds the worker's one event loop, and so every stream's next token, for as long
as it walks the heap. The hook only notes each pause in a list; :func:`record_gc_pauses` moves
them into the histogram, off the collector (each second in the worker, and before each scrape).
It must not observe from inside the collection: a collection starts on any allocation, also one
made while prometheus-client holds its lock (in multiprocess mode one lock for every value, not
re-entrant), and observing there would wait for that lock for ever.
"""

from __future__ import annotations

import gc
import os
from time import perf_counter
from typing import TYPE_CHECKING, Any

from greenlet import greenlet
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from .modelserver import RESTARTS_HELP, RESTARTS_METRIC

if TYPE_CHECKING:
    from .stream.ending import StreamEnd

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_GC_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 1.5, 2)

OPEN_STREAMS = Gauge("axrisi_open_streams", "Streams generating now, per worker summed.",
                     multiprocess_mode="livesum")
STREAMS = Counter("axrisi_streams_total", "Streams by how they ended.", ["outcome"])
TIME_TO_FIRST_TOKEN = Histogram("axrisi_time_to_first_token_seconds",
                                "From the stream's start to the model's first content.",
                                buckets=_LATENCY_BUCKETS)
STREAM_DURATION = Histogram("axrisi_stream_duration_seconds",
                            "From the stream's start to its terminal event.",
                            buckets=_DURATION_BUCKETS)
TOKENS = Counter("axrisi_tokens_relayed_total",
                 "Model output tokens relayed (upstream usage, or content pieces without it).")
CANCELLATIONS = Counter("axrisi_cancellations_total",
                        "Streams cancelled because their client left or stopped reading.")
CANCELLATION_SECONDS = Histogram("axrisi_cancellation_seconds",
                                 "From noticing the client left to the upstream closed.",
                                 buckets=_LATENCY_BUCKETS)
UPSTREAM_ERRORS = Counter("axrisi_upstream_errors_total", "Upstream failures by kind.", ["kind"])
UPSTREAM_FALLBACKS = Counter("axrisi_upstream_fallbacks_total",
                             "Streams sent to the fallback upstream, by why the primary failed.",
                             ["reason"])
REJECTIONS = Counter("axrisi_rejections_total", "Requests refused with 429 or 503, by code.",
                     ["code"])
OPEN_STREAM_SLOTS = Gauge("axrisi_open_stream_slots",
                          "Open-stream slots (per-user leases) held, per worker summed.",
                          multiprocess_mode="livesum")
REDIS_UP = Gauge("axrisi_redis_up", "1 while Redis answers, 0 while limits are per process.",
                 multiprocess_mode="min")
AUTH_REFUSALS = Counter("axrisi_auth_refusals_total",
                        "Requests refused (429) for too many failed logins from their address.")
REDIS_FALLBACKS = Counter("axrisi_redis_fallbacks_total",
                          "Redis calls that took their fallback (Redis slow or down).",
                          ["operation"])
GC_PAUSE = Histogram("axrisi_gc_pause_seconds",
                     "Collections of the cyclic garbage collector by generation; each holds its "
                     "worker's event loop (every stream) for its length.",
                     ["generation"], buckets=_GC_BUCKETS)
MODEL_SERVER_RESTARTS = Counter(RESTARTS_METRIC, RESTARTS_HELP)
"""Counted by the model server's supervisor, a process of its own (``axrisi/modelserver.py``),
in its own file of the multiprocess directory; declared here so that every scrape shows it, 0
until a restart. Never incremented in a worker."""

_GC_PENDING_MAX = 10_000
"""Pauses kept for :func:`record_gc_pauses` per generation; more are dropped (a process that
watches but never records must not grow: the worker records every second)."""
_gc_pending: tuple[list[float], list[float], list[float]] = ([], [], [])
_gc_started = 0.0
_gc_series: tuple[Histogram, ...] = ()


def time_collection(phase: str, info: dict[str, Any]) -> None:
    """The ``gc.callbacks`` hook: note how long each collection took. Two clock reads and an
    append; no lock, no metric (see the module's docstring)."""
    global _gc_started
    now = perf_counter()
    if phase == "start":
        _gc_started = now
        return
    pending = _gc_pending[info["generation"]]
    if len(pending) < _GC_PENDING_MAX:
        pending.append(now - _gc_started)


def watch_gc() -> bool:
    """Time this process's collections into ``axrisi_gc_pause_seconds`` from now on; False if
    it was already watching (a hook inherited through fork included: one per process)."""
    global _gc_series
    if time_collection in gc.callbacks:
        return False
    _gc_series = tuple(GC_PAUSE.labels(str(generation)) for generation in range(3))
    gc.callbacks.append(time_collection)
    return True


def record_gc_pauses() -> None:
    """Move the pauses noted since the last call into the histogram (never from the hook)."""
    for series, pending in zip(_gc_series, _gc_pending, strict=False):
        n = len(pending)
        if n:
            for seconds in pending[:n]:
                series.observe(seconds)
            del pending[:n]  # a collection meanwhile appends behind the first n: kept


_greenlets: Gauge | None = None


def count_greenlets() -> None:
    """Count this worker's live greenlets (a leak check): a walk of the GC's objects.

    Only with ``AXRISI_GREENLET_GAUGE=1``, when /metrics is served: the walk holds the worker's
    one event loop, and so every stream's next token, for 110-140 ms at 3,000 open streams.
    """
    global _greenlets
    if _greenlets is None:  # made on first use: without the setting, no misleading 0
        _greenlets = Gauge("axrisi_greenlets", "Live greenlets of each worker, counted when "
                           "that worker last served /metrics (AXRISI_GREENLET_GAUGE=1).",
                           multiprocess_mode="liveall")
    live = sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead)
    _greenlets.set(live)


def registry() -> CollectorRegistry:
    """Every worker's samples in multiprocess mode; this process's registry otherwise."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    collected = CollectorRegistry()
    MultiProcessCollector(collected)
    return collected


def stream_started() -> None:
    """A stream began generating in this worker."""
    OPEN_STREAMS.inc()


def stream_ended(end: StreamEnd) -> None:
    """Everything a stream's end tells the metrics, recorded once, off the per-token path.

    The open-streams gauge goes down last: another worker serving /metrics reads these files
    while this one writes them, and a scrape that sees the stream gone must see its outcome."""
    STREAMS.labels("client_gone" if end.outcome == "cancelled" else end.outcome).inc()
    STREAM_DURATION.observe(end.ended_at - end.started_at)
    if end.first_content_at is not None:
        TIME_TO_FIRST_TOKEN.observe(end.first_content_at - end.started_at)
    TOKENS.inc(end.tokens_out)
    if end.error_kind is not None:
        UPSTREAM_ERRORS.labels(end.error_kind).inc()
    if end.cancel_requested_at is not None:
        CANCELLATIONS.inc()
        CANCELLATION_SECONDS.observe(end.ended_at - end.cancel_requested_at)
    OPEN_STREAMS.dec()
