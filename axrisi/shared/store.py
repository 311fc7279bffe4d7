"""The Redis connection that workers and instances share, and the fault model around it.

With ``REDIS_URL`` set, per-user limits, stream ids and resumable events live in Redis so that
they hold for the whole deployment. Redis can be slow (a snapshot fork, a failover, a noisy
neighbour) or briefly unreachable; streaming must go on, and a slow reply is not an outage.

* **Deadlines by kind of call.** A check on the request path (a limit, an id, a resume's
  lookup) waits at most :data:`CHECK_SECONDS`; a background write (the event mirror, lease
  renewals) :data:`WRITE_SECONDS`; a blocking read waits its block time plus
  :data:`WRITE_SECONDS`. On this 2-core machine a gevent socket timeout also counts time spent
  waiting for the hub, so none of them is shorter than a second.
* **Retries where safe.** A connection that fails (a pooled socket from before a Redis restart)
  is retried once on a fresh one; every command we send is idempotent or harmless twice.
* **The breaker** opens on a connection failure or on :data:`TIMEOUTS_TO_OPEN` timeouts in a
  row, never on one slow reply; while open, calls take their fallback at once, and after
  :data:`RETRY_AFTER_FAILURE_SECONDS` the next call tries Redis again. Each fallback taken is
  counted in ``axrisi_redis_fallbacks_total{operation}``; ``axrisi_redis_up`` is 0 while open.
* **One wait per request.** Once a check of a request has timed out, that request's further
  checks take their fallbacks at once, so a hung Redis delays a request by one deadline, not
  one per check (rate limit, token quota, stream slot, id).
* A Redis *answer* that refuses a command (a script error, a wrong type) is not an outage: it
  is raised to the caller, who knows what it means.

ARCHITECTURE.md ("Redis: slow, down, back") lists what each operation does in each state.
"""

from __future__ import annotations

import hashlib
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import gevent
import redis
from limits.storage import RedisClusterStorage, RedisStorage
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECK_SECONDS = 1.0
"""The longest a request waits for one Redis check before it takes the fallback."""
WRITE_SECONDS = 2.0
"""The longest a background write waits before it is retried later."""
TIMEOUTS_TO_OPEN = 3
LATE_SECONDS = 0.5
"""A reply this late counts as trouble too: meanwhile nobody could see Redis (a stall that
ends just within the deadline)."""
RETRY_AFTER_FAILURE_SECONDS = 1.0
LIMITS_PREFIX = "LIMITS"
"""The ``limits`` package's key prefix for our rate limits' and token quota's counters."""

OUTAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError,
                 redis.exceptions.ClusterError, redis.exceptions.TryAgainError,
                 redis.exceptions.ReadOnlyError, redis.exceptions.SlotNotCoveredError)
"""What counts against Redis's health. ``redis.ResponseError`` (an answer) does not, except
the answers a Redis Cluster gives while it moves slots or elects a master (CLUSTERDOWN,
TRYAGAIN, a demoted master's READONLY) and its client's "no node serves this slot". Its client's
other errors (a command it cannot route) are bugs, raised."""


def redis_options(timeout: float | None = CHECK_SECONDS,
                  tls: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Connection options for every Redis client we make (ours, flask-limiter's, limits'):
    the deadlines, one retry, and ``tls`` for a ``rediss://`` URL
    (``Settings.redis_tls_options``: AXRISI_REDIS_CA_FILE, AXRISI_REDIS_TLS_VERIFY)."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": CHECK_SECONDS,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "health_check_interval": 0,
        **(tls or {}),
    }


class LazyCluster:
    """A :class:`redis.RedisCluster` made on first use. Its constructor asks a node for the slot
    map, and raises when none answers; a cluster that is merely down at start must be what the
    fault model says (fallbacks, 503s), not a worker that cannot boot. Until it is made, every
    use raises :class:`redis.ConnectionError`, an outage like any other."""

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        self._url = url
        self._options = dict(options)
        self._made: redis.RedisCluster | None = None

    def made(self) -> redis.RedisCluster:
        if self._made is None:
            try:
                self._made = redis.RedisCluster.from_url(self._url, **self._options)
            except redis.exceptions.RedisClusterException as error:
                raise redis.ConnectionError(str(error)) from None
        return self._made

    def __getattr__(self, name: str) -> Any:
        return getattr(self.made(), name)


class LuaScript:
    """A script run by its SHA, loaded again where a node does not have it (a Redis that
    restarted, a replica promoted by a failover: script caches are not replicated). In a
    pipeline it is sent whole (``EVAL``): a cluster's pipeline cannot load scripts first."""

    def __init__(self, store: SharedStore, text: str) -> None:
        self.store = store
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, keys: list[Any], args: list[Any], client: redis.Redis | None = None
                 ) -> Any:
        target = client or self.store.client
        try:
            return target.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return target.eval(self.text, len(keys), *keys, *args)

    def queue(self, pipe: redis.client.Pipeline, keys: list[Any], args: list[Any]) -> None:
        # execute_command: a cluster's pipeline has no eval() but routes EVAL by its keys.
        pipe.execute_command("EVAL", self.text, len(keys), *keys, *args)  # type: ignore[no-untyped-call]


class SharedStore:
    """Redis clients by deadline, plus the breaker that decides when to stop trying."""

    def __init__(self, url: str, tls: Mapping[str, Any] | None = None,
                 cluster: bool = False) -> None:
        self.url = url
        self.tls = dict(tls or {})
        """redis-py's ``ssl_*`` options for a ``rediss://`` URL, given to every client made
        from this store (:meth:`options`)."""
        self.cluster = cluster
        """``url`` names a node of a Redis Cluster (AXRISI_REDIS_CLUSTER)."""
        self.client: redis.Redis = self.connect(CHECK_SECONDS)
        self.background: redis.Redis = self.connect(WRITE_SECONDS)
        self._limits: RedisStorage | None = None
        self.up = True
        self._timeouts = 0
        self._down_until = 0.0
        self._waited: weakref.WeakSet[Any] = weakref.WeakSet()
        self.trouble_at = float("-inf")
        """When (monotonic) a call last failed (a timeout, a refused connection) or answered
        later than :data:`LATE_SECONDS`."""
        self.listeners: list[Callable[[bool], None]] = []

    def options(self, timeout: float | None = CHECK_SECONDS) -> dict[str, Any]:
        """:func:`redis_options` with this store's TLS options: for any client on its URL."""
        return redis_options(timeout, self.tls)

    def connect(self, timeout: float | None) -> redis.Redis:
        """A client with its own connections: to one Redis, or to the cluster (made lazily,
        typed as the one-Redis client whose commands it shares)."""
        if self.cluster:
            return cast(redis.Redis, LazyCluster(self.url, self.options(timeout)))
        return redis.Redis.from_url(self.url, **self.options(timeout))

    def reader(self, block_seconds: float) -> redis.Redis:
        """A client for blocking reads of up to ``block_seconds`` (its own pool)."""
        return self.connect(block_seconds + WRITE_SECONDS)

    def script(self, text: str) -> LuaScript:
        """A Lua script on this store. In a cluster, its keys must share one hash slot
        (:mod:`axrisi.shared.keys`)."""
        return LuaScript(self, text)

    def limits_storage(self) -> RedisStorage:
        """The ``limits`` storage on this Redis that the rate limits and the token quota share,
        made when first needed: the cluster's client asks a node for the slot map."""
        if self._limits is None:
            self._limits = self._make_limits_storage()
        return self._limits

    def _make_limits_storage(self) -> RedisStorage:
        if not self.cluster:
            return RedisStorage(self.url, key_prefix=LIMITS_PREFIX,
                                connection_pool=self.client.connection_pool)
        split = urlsplit(self.url)
        uri = urlunsplit(("redis+cluster", split.netloc, "", "", ""))
        options = self.options(CHECK_SECONDS)
        if split.scheme == "rediss":
            options["ssl"] = True
        try:
            return RedisClusterStorage(uri, key_prefix=LIMITS_PREFIX, **options)
        except redis.exceptions.RedisClusterException as error:
            raise redis.ConnectionError(str(error)) from None

    @property
    def open(self) -> bool:
        """True while calls should not even try Redis."""
        return not self.up and time.monotonic() < self._down_until

    def begin_request(self) -> None:
        """A new request on this greenlet (keep-alive connections serve several)."""
        self._waited.discard(gevent.getcurrent())

    def run(self, operation: Callable[[redis.Redis], T], fallback: Callable[[], T],
            name: str = "other", client: redis.Redis | None = None, check: bool = False) -> T:
        """``operation(client)`` while Redis answers; ``fallback()`` while it does not.

        ``check``: a check on a request's admission path, which shares the request's one wait.
        """
        if self.open or (check and gevent.getcurrent() in self._waited):
            metrics.REDIS_FALLBACKS.labels(name).inc()
            return fallback()
        began = time.monotonic()
        try:
            result = operation(client or self.client)
        except OUTAGE_ERRORS as error:
            self.failed(error, check)
            metrics.REDIS_FALLBACKS.labels(name).inc()
            return fallback()
        self.succeeded(began)
        return result

    def succeeded(self, began: float | None = None) -> None:
        """Redis answered (a call sent at ``began``, when given): close the breaker."""
        if began is not None and time.monotonic() - began > LATE_SECONDS:
            self.trouble_at = time.monotonic()
        self._timeouts = 0
        if not self.up:
            self._set_up(True)
            log.warning("Redis is reachable again: limits and resumes are shared again")

    def failed(self, error: BaseException, check: bool = False) -> None:
        """Redis did not answer: count a timeout, or open the breaker on a connection failure."""
        self.trouble_at = time.monotonic()
        if isinstance(error, (redis.TimeoutError, TimeoutError)):
            if check:
                self._waited.add(gevent.getcurrent())
            self._timeouts += 1
            if self._timeouts < TIMEOUTS_TO_OPEN:
                return
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_SECONDS
        if self.up:
            self._set_up(False)
            log.warning("Redis is unreachable (%s): limits fall back to per-process ones",
                        type(error).__name__)

    def troubled_within(self, seconds: float) -> bool:
        """Whether a call failed or answered late, or the breaker was open, in the last
        ``seconds``."""
        return self.open or time.monotonic() - self.trouble_at < seconds

    def _set_up(self, up: bool) -> None:
        self.up = up
        for listener in self.listeners:
            listener(up)
