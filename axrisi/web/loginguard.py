"""Failed authentications per client address, so that a flood of bad tokens cannot starve the
users with good ones.

Each failed authentication is counted for the client's address (``AXRISI_AUTH_FAILURE_LIMIT``,
flask-limiter's notation, moving window; in Redis through the fault model when ``REDIS_URL``
is set, like the rate limit). Past the limit the address is refused with ``429 rate_limited``
and ``Retry-After``, and this worker remembers it until the window frees up, so that its next
requests are refused before their token is even decoded, and before Flask: ``blockgate.py``
asks :meth:`LoginGuard.refusal` for every ``/api/`` request and answers a remembered address
with a pre-built 429, holding it a moment on a closing connection (so a flood costs the worker a
dictionary look-up and a sleeping greenlet per request, and the attacker a second per request
per connection). A valid user pays nothing (only failures touch the counter). Refusals are
logged in aggregate (one line per :data:`REPORT_SECONDS`), not one line each.

The address is ``REMOTE_ADDR`` as ``clientaddress.py`` leaves it: behind the deployment's own
proxies, the client's address from ``X-Forwarded-For`` (``AXRISI_TRUSTED_PROXIES``). An IPv6
client is counted by its /64 network: one subscriber commonly holds a whole /64, and would
otherwise get a fresh allowance from each of its 2^64 addresses.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time

import limits
from limits.storage import MemoryStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from .. import metrics
from ..shared.limitstore import SCHEME, SharedLimitStorage
from ..shared.store import SharedStore
from .errors import ApiError

log = logging.getLogger(__name__)

REPORT_SECONDS = 10.0
REFUSAL = "Too many failed authentications from this address; try again later."
"""The 429's sentence, here and in ``blockgate.py``."""
MAX_REMEMBERED = 100_000
"""Blocked addresses one worker remembers at most (a flood from many addresses stays bounded)."""


def counted_as(address: str) -> str:
    """What failures are counted under: the address, or an IPv6 address's /64 network."""
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    except ValueError:
        return address


def retry_after(wait: float) -> str:
    """``Retry-After`` for ``wait`` seconds: whole seconds, at least one."""
    return str(max(1, math.ceil(wait)))


class LoginGuard:
    """Counts failed logins per address; refuses an address past the limit."""

    def __init__(self, limit: str, store: SharedStore | None, workers: int = 1) -> None:
        self.items = limits.parse_many(limit)
        storage: Storage = (SharedLimitStorage(SCHEME + store.url, store=store, workers=workers)
                            if store is not None else MemoryStorage())
        self.limiter = MovingWindowRateLimiter(storage)
        self.blocked: dict[str, float] = {}
        self._refused = 0
        self._addresses: set[str] = set()
        self._reported_at = time.monotonic()

    def refusal(self, address: str) -> float | None:
        """Seconds left for an address this worker knows is past the limit, the refusal counted
        (the metric, the aggregate line); None for an address that may go on."""
        address = counted_as(address)
        until = self.blocked.get(address)
        if until is None:
            return None
        wait = until - time.monotonic()
        if wait <= 0:
            del self.blocked[address]
            return None
        self._count(address)
        return wait

    def check(self, address: str) -> None:
        """Refuse an address this worker knows is past the limit (no token is decoded)."""
        wait = self.refusal(address)
        if wait is not None:
            raise self._error(wait)

    def failed(self, address: str) -> None:
        """Count a failed authentication; past the limit, refuse it (429, not 401)."""
        address = counted_as(address)
        for item in self.items:
            if not self.limiter.hit(item, "login-failures", address):
                reset, _left = self.limiter.get_window_stats(item, "login-failures", address)
                wait = max(1.0, reset - time.time())
                if len(self.blocked) < MAX_REMEMBERED:
                    self.blocked[address] = time.monotonic() + wait
                self._count(address)
                raise self._error(wait)

    def _count(self, address: str) -> None:
        metrics.AUTH_REFUSALS.inc()
        self._refused += 1
        self._addresses.add(address)
        self._report()

    @staticmethod
    def _error(wait: float) -> ApiError:
        return ApiError(429, "rate_limited", REFUSAL, {"Retry-After": retry_after(wait)},
                        quiet=True)

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._reported_at < REPORT_SECONDS:
            return
        log.warning("refused %d requests from %d addresses after too many failed logins "
                    "in the last %.0f s", self._refused, len(self._addresses),
                    now - self._reported_at)
        self._refused, self._addresses, self._reported_at = 0, set(), now
