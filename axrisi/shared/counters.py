"""Per-user counters for the whole deployment: open-stream slots and model tokens.

The user is the JWT's ``sub`` (as its :func:`~axrisi.users.user_key`), never the IP. Each count
lives in Redis when ``REDIS_URL`` is set (so that it holds across workers and instances) and in
the process otherwise. The request rate is flask-limiter's (``axrisi.web.quotas``, with
``limitstore`` as its storage); the admission policy and its 429s are ``axrisi.web.quotas``.

* **open streams**: at most ``AXRISI_MAX_STREAMS_PER_USER`` at once (0 = no limit). A slot is an
  expiring lease (a member of a per-user sorted set scored by its expiry), renewed by one greenlet
  per worker while the stream generates and removed on every way out; a worker that dies stops
  renewing, so its leases lapse within ``AXRISI_STREAM_LEASE_SECONDS``.
* **tokens**: ``AXRISI_TOKEN_QUOTA`` with the ``limits`` package (fixed window), charged when a
  stream ends with the usage the upstream reports, or with a count where it reports none.
  A user with no tokens left is refused before a stream starts. A stream that
  crosses the line while it runs is allowed to finish and is charged in full: cutting an answer
  in the middle would waste what was already paid for, and the overshoot is bounded by one
  answer per open stream.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import gevent
import limits
import limits.storage
import limits.strategies
import redis

from .. import metrics
from ..users import user_key
from . import keys
from .mirror import EventMirror, SideWrite
from .store import LIMITS_PREFIX, SharedStore

log = logging.getLogger(__name__)

T = TypeVar("T")

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return renewed
"""


@dataclass(eq=False)
class Lease:
    """One open-stream slot."""

    user_key: str
    id: str
    shared: bool


class StreamSlots:
    """Open streams per user, as expiring leases (Redis) or a per-process count."""

    def __init__(self, limit: int, lease_seconds: float, store: SharedStore | None) -> None:
        self.limit = limit
        self.lease_ms = int(lease_seconds * 1000)
        self.store = store
        self.local: dict[str, set[str]] = {}
        self.held: set[Lease] = set()
        self.unreleased: list[Lease] = []
        self._renewer: gevent.Greenlet[[], None] | None = None
        if store is not None:
            self._renew = store.script(_RENEW)

    def new_lease(self, user: str) -> Lease:
        """A lease for one of ``user``'s streams, not taken yet."""
        return Lease(user_key(user), uuid.uuid4().hex, shared=False)

    def acquire(self, user: str) -> Lease | None:
        """Take a slot in this worker's count (no Redis, or it did not answer), or None when
        ``user`` already has ``limit`` streams open here. With Redis,
        :class:`axrisi.shared.admission.SharedAdmission` takes it in the user's sorted set."""
        lease = self.new_lease(user)
        open_here = self.local.setdefault(lease.user_key, set())
        if 0 < self.limit <= len(open_here):
            return None
        open_here.add(lease.id)
        return self._hold(lease)

    def admitted(self, lease: Lease) -> Lease:
        """Hold a lease that Redis granted (counted here only when there is no limit: for
        ``GET /api/usage``, which then reports this worker's streams)."""
        if self.limit > 0:
            lease.shared = True
        else:
            self.local.setdefault(lease.user_key, set()).add(lease.id)
        return self._hold(lease)

    def release(self, lease: Lease | None, writer: EventMirror | None = None) -> None:
        """Give the slot back; safe to call twice. With ``writer``, the release rides in its
        next pipeline (with the stream's terminal event, which the response waits for)."""
        if lease is None or lease not in self.held:
            return
        self.held.discard(lease)
        metrics.OPEN_STREAM_SLOTS.dec()
        if lease.shared and self.store is not None:
            key = keys.stream_slots(lease.user_key)
            if writer is not None and not self.store.open:
                writer.also(SideWrite(lambda pipe: len([pipe.zrem(key, lease.id)]),
                                      lambda: self._release_later(lease)))
                return
            self.store.run(lambda r: r.zrem(key, lease.id),
                           lambda: self._release_later(lease), "slot_release")
        else:
            open_here = self.local.get(lease.user_key)
            if open_here is not None:
                open_here.discard(lease.id)
                if not open_here:
                    del self.local[lease.user_key]

    def open_count(self, user: str) -> int:
        """The user's open-stream slots in use, as the limit counts them (deployment-wide
        through Redis; this worker's while Redis does not answer, or with no limit)."""
        key = user_key(user)
        local = len(self.local.get(key, ()))
        if self.store is None or self.limit <= 0:
            return local
        now_ms = int(time.time() * 1000)
        return self.store.run(lambda r: int(r.zcount(keys.stream_slots(key), f"({now_ms}", "+inf")),
                              lambda: local, "usage", check=True)

    def _release_later(self, lease: Lease) -> None:
        """Redis did not take the release: the renewer retries it (else the slot stays taken
        until its lease lapses, a minute by default)."""
        self.unreleased.append(lease)
        self._start_renewer()

    def _hold(self, lease: Lease) -> Lease:
        self.held.add(lease)
        metrics.OPEN_STREAM_SLOTS.inc()
        if lease.shared:
            self._start_renewer()
        return lease

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.dead:
            self._renewer = gevent.spawn(self._renew_forever)

    def _renew_forever(self) -> None:
        """One greenlet per worker renews every shared lease at a third of its lifetime, and
        retries the releases that Redis did not take (every second until it does)."""
        while self.unreleased or any(lease.shared for lease in self.held):
            gevent.sleep(min(self.lease_ms / 3000, 1.0) if self.unreleased
                         else self.lease_ms / 3000)
            self._renew_once()

    def _renew_once(self) -> None:
        """One round of the renewer, out of its loop so that the callbacks bind its lists."""
        shared = [lease for lease in self.held if lease.shared]
        gone, self.unreleased = self.unreleased, []
        if (shared or gone) and self.store is not None:
            self.store.run(lambda r: self._renew_all(r, shared, gone),
                           lambda: self.unreleased.extend(gone), "slot_renew")

    def _renew_all(self, client: redis.Redis, leases: list[Lease], gone: list[Lease]) -> None:
        pipe = client.pipeline(transaction=False)
        for lease in leases:
            self._renew.queue(pipe, [keys.stream_slots(lease.user_key)], [self.lease_ms, lease.id])
        for lease in gone:
            pipe.zrem(keys.stream_slots(lease.user_key), lease.id)
        pipe.execute()


class TokenQuota:
    """Model tokens per user and period, with the ``limits`` package (its counters under the
    user's hash tag: :func:`axrisi.shared.keys.user_tag`)."""

    def __init__(self, quota: str, store: SharedStore | None) -> None:
        self.item = limits.parse(quota)
        self.store = store
        self.local = limits.strategies.FixedWindowRateLimiter(limits.storage.MemoryStorage())
        self._shared: limits.strategies.FixedWindowRateLimiter | None = None

    def retry_after(self, user: str) -> int | None:
        """None while the user has tokens left; else seconds until the window resets."""
        key = keys.user_tag(user_key(user))
        return self._on(lambda limiter: _seconds_left(limiter, self.item, key), check=True)

    def charge(self, user: str, tokens: int, writer: EventMirror | None = None) -> None:
        """Count ``tokens`` against the user's quota (it may go past the line: see above).
        With ``writer``, the charge rides in its next pipeline: ``limits``' own fixed-window
        counter (its key, its expiry set with the window's first charge), as plain commands."""
        if tokens <= 0:
            return
        key = keys.user_tag(user_key(user))
        if writer is None or self.store is None or self.store.open:
            self._on(lambda limiter: limiter.hit(self.item, key, cost=tokens))
            return
        counter, window = self.counter_key(user), self.item.get_expiry()

        def queue(pipe: redis.client.Pipeline) -> int:
            pipe.incrby(counter, tokens)
            pipe.expire(counter, window, nx=True)
            return 2

        writer.also(SideWrite(queue, lambda: self.local.hit(self.item, key, cost=tokens)))

    def counter_key(self, user: str) -> str:
        """The Redis key of ``user``'s counter in the current window: ``limits``' own (its
        fixed window counts under ``LIMITS:<item key>``), in the user's hash slot."""
        return f"{LIMITS_PREFIX}:{self.item.key_for(keys.user_tag(user_key(user)))}"

    def used(self, user: str) -> tuple[int, int]:
        """Tokens charged in the current window, and seconds until it resets (0: no window)."""
        key = keys.user_tag(user_key(user))
        return self._on(lambda limiter: _window_use(limiter, self.item, key), check=True)

    def _on(self, operation: Callable[[limits.strategies.FixedWindowRateLimiter], T],
            check: bool = False) -> T:
        store = self.store
        if store is None:
            return operation(self.local)
        return store.run(lambda _r: operation(self._shared_limiter(store)),
                         lambda: operation(self.local), "token_quota", check=check)

    def _shared_limiter(self, store: SharedStore) -> limits.strategies.FixedWindowRateLimiter:
        """The limiter on Redis, made on first use (raises an outage error until it can be)."""
        if self._shared is None:
            self._shared = limits.strategies.FixedWindowRateLimiter(store.limits_storage())
        return self._shared


def _seconds_left(limiter: limits.strategies.FixedWindowRateLimiter, item: limits.RateLimitItem,
                  key: str) -> int | None:
    if limiter.test(item, key):
        return None
    reset_at, _remaining = limiter.get_window_stats(item, key)
    return max(1, math.ceil(reset_at - time.time()))


def _window_use(limiter: limits.strategies.FixedWindowRateLimiter, item: limits.RateLimitItem,
                key: str) -> tuple[int, int]:
    """The raw count (past the quota too: a stream that crosses the line is charged in full)."""
    storage_key = item.key_for(key)
    used = int(limiter.storage.get(storage_key))
    if used == 0:
        return 0, 0
    return used, max(0, math.ceil(limiter.storage.get_expiry(storage_key) - time.time()))
