"""Prometheus metrics, correct with several gunicorn workers (multiprocess mode).

``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers
fork; each worker writes its samples there and ``/metrics`` aggregates all of them. Metrics are
created once, at import, so that building the app twice (tests) does not register them twice.
Nothing here runs per token: streams are counted when they start and end.
"""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING

from greenlet import greenlet
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from .stream.ending import StreamEnd

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

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
