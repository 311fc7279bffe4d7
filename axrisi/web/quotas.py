"""Admission: the per-user quotas a ``POST /api/run`` must pass, and their contract's 429s.

In order: the request rate (flask-limiter with ``AXRISI_RATE_LIMIT``, moving window, its storage
``axrisi.shared.limitstore``: Redis through the fault model, this worker's share in memory while
Redis cannot count), the token quota, then an open-stream slot (``axrisi.shared.counters``).
With Redis the last two are one round trip that also claims the stream's id
(``axrisi.shared.admission``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, NamedTuple

import limits
from flask import Flask, Response
from flask_limiter import Limiter, RateLimitExceeded

from ..config import Settings
from ..shared.admission import SharedAdmission
from ..shared.counters import Lease, StreamSlots, TokenQuota
from ..shared.ids import SharedIds
from ..shared.keys import user_tag
from ..shared.limitstore import SCHEME
from ..shared.mirror import EventMirror
from ..shared.store import SharedStore
from ..users import user_key
from .auth import current_user
from .errors import ApiError, json_error

log = logging.getLogger(__name__)

RATE_LIMITED_MESSAGE = "Rate limit exceeded"
RATE_KEY_PREFIX = "axrisi"


UNCAPPED_TOKENS = "1000000000000/day"
"""Without ``AXRISI_TOKEN_QUOTA`` tokens are still counted (per day) for ``GET /api/usage``."""


class Quotas:
    """The three limits together, as the API uses them."""

    def __init__(self, settings: Settings, store: SharedStore | None,
                 writer: EventMirror | None = None, ids: SharedIds | None = None) -> None:
        self.rate_limit = settings.rate_limit
        self.writer = writer
        """The worker's Redis writer: a stream's end writes ride with its terminal event."""
        self.slots = StreamSlots(settings.max_streams_per_user, settings.stream_lease_seconds,
                                 store)
        self.tokens = TokenQuota(settings.token_quota or UNCAPPED_TOKENS, store)
        self.token_quota = settings.token_quota is not None
        self.shared = SharedAdmission(store, self.slots, self.tokens, ids, self.token_quota) \
            if store is not None and ids is not None else None

    def admit(self, user: str) -> Admitted:
        """Check the token quota, then take a stream slot (with Redis, and claim the stream's
        id, in one round trip); raise the contract's 429s."""
        if self.shared is not None:
            admission = self.shared.admit(user)
            if admission is not None:
                if admission.quota_retry_after is not None:
                    raise _quota_spent(admission.quota_retry_after)
                if admission.lease is None:
                    raise _too_many_streams()
                return Admitted(admission.lease, admission.stream_id)
        if self.token_quota:  # no Redis, or it did not answer: this worker's counts
            retry_after = self.tokens.retry_after(user)
            if retry_after is not None:
                raise _quota_spent(retry_after)
        lease = self.slots.acquire(user)
        if lease is None:
            raise _too_many_streams()
        return Admitted(lease, None)

    def stream_ended(self, user: str, lease: Lease | None, tokens: int) -> None:
        """Give the slot back and charge the tokens: called on every way a stream ends. With
        Redis both go in the pipeline of the stream's terminal event (the response ends once it
        is written): one round trip for the three."""
        self.slots.release(lease, self.writer)
        self.tokens.charge(user, tokens, self.writer)

    def usage(self, user: str) -> dict[str, Any]:
        """``GET /api/usage``: the figures the 429s enforce, and what is left of them."""
        used, reset = self.tokens.used(user)
        limit = self.slots.limit
        return {
            "rate": [_rate_usage(item, user) for item in limits.parse_many(self.rate_limit)],
            "streams": {"open": self.slots.open_count(user), "max": limit if limit > 0 else None},
            "tokens": {"used": used,
                       "quota": self.tokens.item.amount if self.token_quota else None,
                       "resetSeconds": reset if self.token_quota else None},
        }


class Admitted(NamedTuple):
    """An admitted stream: its slot, and its id when the admission claimed one."""

    lease: Lease
    stream_id: int | None


def _quota_spent(retry_after: int) -> ApiError:
    return ApiError(429, "quota_exceeded", "Token quota exceeded; try again when it resets.",
                    {"Retry-After": str(retry_after)})


def _too_many_streams() -> ApiError:
    return ApiError(429, "too_many_streams", "Too many open streams; close one and try again.")


rate_limiter = Limiter(
    key_func=lambda: user_tag(user_key(current_user())),  # the user's slot in a cluster
    strategy="moving-window",
    headers_enabled=False,
    swallow_errors=True,
    key_prefix=RATE_KEY_PREFIX,
)


def init_rate_limit(app: Flask, settings: Settings, store: SharedStore | None) -> None:
    """Configure flask-limiter: storage (see ``limitstore``), and the contract's 429 body."""
    limits.parse_many(settings.rate_limit)  # the authority on the notation
    if store is not None:
        app.config.update(
            RATELIMIT_STORAGE_URI=SCHEME + store.url,
            RATELIMIT_STORAGE_OPTIONS={"store": store, "workers": settings.web_concurrency},
        )
    else:
        app.config.update(RATELIMIT_STORAGE_URI="memory://")
    rate_limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(_error: RateLimitExceeded) -> Response:
        return json_error(429, "rate_limited", RATE_LIMITED_MESSAGE,
                          {"Retry-After": str(_rate_retry_after())})


RATE_SCOPE = "api.run"
"""flask-limiter's scope for the limit on ``POST /api/run``: its endpoint's name."""


def _rate_usage(item: limits.RateLimitItem, user: str) -> dict[str, Any]:
    """One window of the request rate for ``user``, read where flask-limiter counts it."""
    reset, remaining = rate_limiter.limiter.get_window_stats(
        item, RATE_KEY_PREFIX, user_tag(user_key(user)), RATE_SCOPE)
    window = item.get_expiry()
    left = max(0, remaining)
    seconds = 0 if left >= item.amount else \
        max(1, min(window, math.floor(max(0.0, reset - time.time())) + 1))
    return {"limit": str(item), "remaining": left, "resetSeconds": seconds}


def _rate_retry_after() -> int:
    """Seconds until the breached limit admits again: from 1 to its window's length.

    With the moving window, that is when the oldest hit in the window leaves it: at exactly
    ``oldest + expiry`` (the window stats' first figure), where the hit still counts (the
    ``limits`` package compares with ``>=``), so the answer is the whole seconds to that
    instant plus one, capped at the window. Not flask-limiter's ``RequestLimit.reset_at``: it
    is ``int(oldest + expiry + 1)``, already rounded up, and rounding it up again said 61 for a
    60-second window.
    """
    try:
        current = rate_limiter.current_limit
        if current is not None:
            window_seconds = current.limit.get_expiry()
            reset, _remaining = current.window
            wait = math.floor(max(0.0, reset - time.time())) + 1
            return max(1, min(window_seconds, wait))
    except Exception:  # the storage may be gone; a conservative answer beats none
        log.warning("could not read the rate limit window")
    return 60
