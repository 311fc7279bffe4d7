"""Deployment-wide state: what every worker and instance that shares one Redis agrees on.

The Redis store and its fault model (``store``), stream ids (``ids``), the events written for
resumes elsewhere (``mirror``) and read back (``events``), each user's list of streams
(``listing``), the per-user counters (``counters``) and the rate limit's storage
(``limitstore``). The engine (``axrisi.stream``)
sees only its ports; the web shell (``axrisi.web``) uses these through :class:`SharedState`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import metrics
from ..config import Settings
from .events import RedisEvents
from .ids import SharedIds
from .listing import SharedListing
from .mirror import EventMirror
from .stops import StopRequests
from .store import SharedStore


@dataclass(frozen=True)
class SharedState:
    """The pieces a worker shares through Redis."""

    store: SharedStore
    ids: SharedIds
    mirror: EventMirror
    events: RedisEvents
    stops: StopRequests
    listing: SharedListing


def follow_block_seconds(settings: Settings) -> float:
    """How long a follower through Redis blocks per read: short enough to send its heartbeat,
    renew its attachment within the grace, and look at the generating worker every second."""
    block = min(settings.heartbeat_seconds, 1.0)
    if settings.resume_grace_seconds > 0:
        block = min(block, settings.resume_grace_seconds / 3)
    return max(block, 0.05)


def connect(settings: Settings, url: str) -> SharedState:
    """The shared state on the Redis at ``url``; the mirror's writer starts in this worker."""
    store = SharedStore(url, tls=settings.redis_tls_options(url), cluster=settings.redis_cluster)
    metrics.REDIS_UP.set(1)
    store.listeners.append(lambda up: metrics.REDIS_UP.set(1 if up else 0))
    running_ttl_seconds = int(settings.upstream_timeout_seconds * 2)
    mirror = EventMirror(store, settings.resume_ttl_seconds,
                         running_ttl_seconds=running_ttl_seconds,
                         max_events=settings.resume_max_events,
                         lease_seconds=settings.stream_lease_seconds)
    events = RedisEvents(store, mirror, settings.resume_ttl_seconds,
                         lease_seconds=settings.stream_lease_seconds,
                         block_seconds=follow_block_seconds(settings),
                         quiet_seconds=settings.resume_grace_seconds)
    mirror.start()
    ids = SharedIds(store, mirror.worker_id, max(running_ttl_seconds, settings.resume_ttl_seconds))
    return SharedState(store, ids, mirror, events,
                       StopRequests(store, mirror.worker_id), SharedListing(store))
