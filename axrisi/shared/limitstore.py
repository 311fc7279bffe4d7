"""The rate limit's storage: Redis through the shared store's fault model, or a share in memory.

flask-limiter has an in-memory fallback of its own, but it opens on the first slow reply, gives
every worker a fresh full limit, and backs off up to a minute before it looks at Redis again. So
the limiter is given this storage instead (a ``limits`` storage, registered under the
``axrisi+redis://`` scheme): each call goes through :meth:`SharedStore.run`, with the same
deadlines and breaker as every other Redis call, and while Redis cannot count, this worker
counts its share of the limit in memory (the limit divided by the instance's workers, rounded
up), from the outage's start. The limiter never sees an error, and is back on Redis as soon as
the breaker closes.
"""

from __future__ import annotations

import math
from typing import Any

import redis
from limits.storage import MemoryStorage, MovingWindowSupport, RedisStorage, Storage

from .store import SharedStore

SCHEME = "axrisi+"


class SharedLimitStorage(Storage, MovingWindowSupport):
    """Rate-limit counts in Redis while it answers, this worker's share in memory while not."""

    STORAGE_SCHEME = [SCHEME + "redis", SCHEME + "rediss", SCHEME + "unix"]

    def __init__(self, uri: str, *, store: SharedStore, workers: int = 1,
                 **_options: Any) -> None:
        super().__init__(uri)
        self.store = store
        self.workers = max(1, workers)
        self._redis: RedisStorage | None = None
        self.memory = MemoryStorage()

    @property
    def redis(self) -> RedisStorage:
        """``limits``' own Redis storage on the store's Redis (or cluster), made on first use
        (a cluster down at start is an outage, not a worker that cannot boot)."""
        if self._redis is None:
            self._redis = self.store.limits_storage()
        return self._redis

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return redis.RedisError

    def _share(self, limit: int) -> int:
        return max(1, math.ceil(limit / self.workers))

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.store.run(
            lambda _r: self.redis.acquire_entry(key, limit, expiry, amount),
            lambda: self.memory.acquire_entry(key, self._share(limit), expiry, amount),
            "rate_limit", check=True)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self.store.run(
            lambda _r: self.redis.get_moving_window(key, limit, expiry),
            lambda: self.memory.get_moving_window(key, self._share(limit), expiry),
            "rate_limit_window", check=True)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.store.run(lambda _r: self.redis.incr(key, expiry, amount),
                              lambda: self.memory.incr(key, expiry, amount), "rate_limit",
                              check=True)

    def get(self, key: str) -> int:
        return self.store.run(lambda _r: self.redis.get(key), lambda: self.memory.get(key),
                              "rate_limit_window", check=True)

    def get_expiry(self, key: str) -> float:
        return self.store.run(lambda _r: self.redis.get_expiry(key),
                              lambda: self.memory.get_expiry(key), "rate_limit_window", check=True)

    def check(self) -> bool:
        return True  # it always answers, from Redis or from memory

    def reset(self) -> int | None:
        self.memory.reset()
        return self.store.run(lambda _r: self.redis.reset(), lambda: None, "rate_limit_reset")

    def clear(self, key: str) -> None:
        self.memory.clear(key)
        self.store.run(lambda _r: self.redis.clear(key), lambda: None, "rate_limit_reset")
