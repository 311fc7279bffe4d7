"""Operator endpoints: liveness, readiness and Prometheus metrics.

``/healthz`` answers while the process serves (draining included); ``/readyz`` says 503 once
draining starts, and while the model server that gunicorn's master manages is down (dead, or
loading again after a restart). The worker learns that from a lock the server holds while it
serves (:func:`axrisi.modelserver.serving`, which says why): the kernel drops it the moment the
server dies, the check is three system calls, and unlike an HTTP probe of its ``/health`` it
does not wait behind the streams that keep the model server's threads busy. ``/metrics`` is
open, or wants ``AXRISI_METRICS_TOKEN`` as a bearer token when that is set (compared in constant
time). :func:`time_collections` (started from ``gunicorn.conf.py``) times the worker's garbage
collections into ``axrisi_gc_pause_seconds``.
"""

from __future__ import annotations

import hmac

import gevent
from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import metrics, modelserver
from .errors import Unauthorized
from .lifecycle import Lifecycle
from .services import services

bp = Blueprint("ops", __name__)

GC_RECORD_SECONDS = 1.0


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers, draining or not."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    """Readiness: 200 while taking new streams; 503 once draining, or while the model server
    that gunicorn's master manages does not serve (its streams would fail at once)."""
    lifecycle: Lifecycle = services().lifecycle
    if lifecycle.draining:
        return jsonify(status="draining"), 503
    model_server = services().settings.model_server_url
    if model_server and not modelserver.serving(model_server):
        return jsonify(status="model_server_down"), 503
    return jsonify(status="ready")


@bp.get("/metrics")
def prometheus() -> Response:
    """The Prometheus text format, aggregated over every worker."""
    token = services().settings.metrics_token
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized()
    if services().settings.greenlet_gauge:  # a debugging aid: it walks the whole heap
        metrics.count_greenlets()
    metrics.record_gc_pauses()
    return Response(generate_latest(metrics.registry()), content_type=CONTENT_TYPE_LATEST)


def time_collections() -> None:
    """From gunicorn's ``post_worker_init``: time this worker's garbage collections, and record
    the pauses each second (off the collector: ``axrisi/metrics.py`` says why). Once per
    process: a second call does nothing."""
    if not metrics.watch_gc():
        return

    def record() -> None:
        while True:
            gevent.sleep(GC_RECORD_SECONDS)
            metrics.record_gc_pauses()

    gevent.spawn(record)
