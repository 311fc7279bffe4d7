"""Readiness, load shedding and graceful shutdown for one worker.

* ``/healthz`` answers 200 as long as the process serves, draining included; ``/readyz`` answers
  503 once draining starts, so a load balancer stops sending new streams.
* Past ``AXRISI_MAX_STREAMS`` streams generating in this worker, and while draining, a new
  ``POST /api/run`` gets ``503 unavailable`` with ``Retry-After`` at once, instead of a slow death.
* On SIGTERM gunicorn's worker stops accepting and waits up to ``graceful_timeout`` for open
  requests. :func:`watch_worker` (started from ``gunicorn.conf.py``) notices that the worker is
  no longer alive, starts draining, and shortly before the graceful timeout ends every stream
  still generating with an ``error`` event of code ``shutting_down``, which also closes its
  upstream request. Clients thus always get a terminal event, never a silent cut.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import gevent

from ..stream.registry import StreamRegistry
from .errors import ApiError

if TYPE_CHECKING:  # for its type only: the app does not import gunicorn's worker machinery
    from gunicorn.workers.base import Worker

log = logging.getLogger(__name__)

SHUTDOWN_MESSAGE = "The server is restarting; reconnect to continue."
RETRY_AFTER_SECONDS = 2
WATCH_INTERVAL_SECONDS = 0.25
ENDING_MARGIN_SECONDS = 3.0


class Lifecycle:
    """This worker's draining state and its capacity check."""

    def __init__(self, registry: StreamRegistry, max_streams: int) -> None:
        self.registry = registry
        self.max_streams = max_streams
        self.draining = False

    def admit(self) -> None:
        """Refuse a new stream while draining or at capacity (503 unavailable)."""
        if self.draining:
            raise _unavailable("The server is restarting; try again in a moment.")
        if len(self.registry.running) >= self.max_streams:
            raise _unavailable("The server is at capacity; try again in a moment.")

    def drain(self, graceful_timeout: float) -> None:
        """Stop taking streams; end those still running shortly before the timeout."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d streams open", len(self.registry.running))
        gevent.spawn_later(max(0.0, graceful_timeout - ENDING_MARGIN_SECONDS), self.end_all)

    def end_all(self) -> None:
        """Interrupt every running stream with ``shutting_down``."""
        for stream in list(self.registry.running.values()):
            stream.generation.interrupt("shutting_down", SHUTDOWN_MESSAGE)


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, {"Retry-After": str(RETRY_AFTER_SECONDS)})


def watch_worker(worker: Worker, lifecycle: Lifecycle) -> None:
    """From gunicorn's ``post_worker_init``: drain when the worker stops being alive."""

    def watch() -> None:
        while worker.alive:
            gevent.sleep(WATCH_INTERVAL_SECONDS)
        lifecycle.drain(float(worker.cfg.graceful_timeout))

    gevent.spawn(watch)
