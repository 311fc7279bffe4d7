"""The Redis connection that workers and instances share, and what happens when it is gone.

With ``REDIS_URL`` set, per-user limits, stream ids (and later resumable events) live in Redis so
that they hold for the whole deployment. Redis can go away; streaming must not. Every use goes
through :meth:`SharedStore.run` with a per-process fallback: on a Redis error the store is marked
down for a second and the fallbacks answer (a warning in the log says limits are per process
now); the next call after that second tries Redis again, and a recovery is logged. Timeouts are
short and redis-py's retries are off, so no request waits on a dead Redis for more than a
fraction of a second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

T = TypeVar("T")

SOCKET_TIMEOUT_SECONDS = 0.25
RETRY_AFTER_FAILURE_SECONDS = 1.0


def redis_options() -> dict[str, Any]:
    """Connection options for every Redis client we make (ours, flask-limiter's, limits')."""
    return {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


class SharedStore:
    """A Redis client plus its health: run an operation on Redis, or its fallback."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: redis.Redis = redis.Redis.from_url(url, **redis_options())
        self.up = True
        self._down_until = 0.0
        self.listeners: list[Callable[[bool], None]] = []

    def run(self, operation: Callable[[redis.Redis], T], fallback: Callable[[], T]) -> T:
        """``operation(client)`` while Redis answers; ``fallback()`` while it does not."""
        if not self.up and time.monotonic() < self._down_until:
            return fallback()
        try:
            result = operation(self.client)
        except (redis.RedisError, OSError):
            self._mark_down()
            return fallback()
        if not self.up:
            self._set_up(True)
            log.warning("Redis is reachable again: limits are shared again")
        return result

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_SECONDS
        if self.up:
            self._set_up(False)
            log.warning("Redis is unreachable: limits fall back to per-process ones")

    def _set_up(self, up: bool) -> None:
        self.up = up
        for listener in self.listeners:
            listener(up)
