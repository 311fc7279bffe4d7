"""Stop requests for streams that another worker or instance generates (``DELETE``).

With resume grace on, a closed connection cannot be told from a dropped one, so a user's Stop
is an explicit request: ``DELETE /api/streams/<id>`` may land on any worker, while only the
generating one can close the upstream. The request goes to that worker's own Redis list
(:func:`axrisi.shared.keys.stops`, named in the stream's record), where one listener greenlet per
worker waits on it with ``BLPOP``: delivered within a round trip, and kept in Redis (for a
minute) if the listener is reconnecting, unlike a pub/sub message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent

from . import keys
from .store import OUTAGE_ERRORS, SharedStore

log = logging.getLogger(__name__)

BLOCK_SECONDS = 1.0
KEEP_MS = 60_000


class StopRequests:
    """Sends stop requests to a worker, and listens for this worker's own."""

    def __init__(self, store: SharedStore, worker_id: str) -> None:
        self.store = store
        self.worker_id = worker_id
        self._reader = store.reader(BLOCK_SECONDS)
        self._listener: gevent.Greenlet[[Callable[[int], object]], None] | None = None

    def request(self, worker: str, stream_id: int) -> None:
        """Ask ``worker`` to stop the stream; raises an outage error when Redis does not take
        it (the caller answers 503: the client may try again)."""
        pipe = self.store.client.pipeline(transaction=False)
        pipe.rpush(keys.stops(worker), stream_id)
        pipe.pexpire(keys.stops(worker), KEEP_MS)
        pipe.execute()

    def listen(self, stop: Callable[[int], object]) -> None:
        """Call ``stop(stream_id)`` for each request addressed to this worker (a greenlet)."""
        if self._listener is None or self._listener.dead:
            self._listener = gevent.spawn(self._listen, stop)

    def _listen(self, stop: Callable[[int], object]) -> None:
        key = keys.stops(self.worker_id)
        while True:
            try:
                item = self._reader.blpop([key], timeout=BLOCK_SECONDS)
            except OUTAGE_ERRORS:
                gevent.sleep(0.25)
                continue
            if item is not None:
                try:
                    stop(int(item[1]))
                except ValueError:
                    log.warning("ignored a malformed stop request")
