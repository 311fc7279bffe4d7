"""Tokens this worker verified a moment ago, so that a client's next request skips the check.

An extension sends the same bearer token with every request until it expires. Verifying it
(flask-jwt-extended and PyJWT: base64, JSON, the signature, every claim) was a tenth of a
one-token request's CPU in py-spy. A token that passed every check a moment ago passes them
again, except the checks of time: so a hit re-checks ``exp`` and ``nbf`` against the clock, and
an entry lives at most ``MAX_AGE_SECONDS``, and never past the token's own ``exp``. Only with
keys that cannot change under a running worker (``JWT_SECRET_KEY``, ``JWT_PUBLIC_KEY``): with
``JWT_JWKS_URL`` a key the provider withdraws must stop working as soon as the worker learns it,
so every token is verified in full there.

Only successes are kept, keyed by the whole ``Authorization`` value (a different token, or the
same one altered, misses and is verified in full). At most ``MAX_ENTRIES`` tokens, oldest
dropped first. The tokens stay in this worker's memory, as the requests carrying them do; they
are never logged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, NamedTuple

MAX_AGE_SECONDS = 60.0
MAX_ENTRIES = 10_000


class _Verified(NamedTuple):
    sub: str
    good_until: float  # wall clock: min(exp, verified + MAX_AGE_SECONDS)
    not_before: float


class VerifiedTokens:
    """A bounded map from an ``Authorization`` header value to the user it proved, for a while."""

    def __init__(self, enabled: bool = True, max_entries: int = MAX_ENTRIES,
                 max_age: float = MAX_AGE_SECONDS) -> None:
        self.enabled = enabled
        self.max_entries = max_entries
        self.max_age = max_age
        self._entries: OrderedDict[str, _Verified] = OrderedDict()

    def user(self, header: str) -> str | None:
        """The ``sub`` of a token verified lately and still within its time, else None."""
        entry = self._entries.get(header)
        if entry is None:
            return None
        now = time.time()
        if now >= entry.good_until or now < entry.not_before:
            del self._entries[header]
            return None
        return entry.sub

    def remember(self, header: str, claims: dict[str, Any]) -> None:
        """Keep a token that passed every check (its claims as flask-jwt-extended decoded them)."""
        exp, sub = claims.get("exp"), claims.get("sub")
        if not isinstance(exp, int | float) or not isinstance(sub, str):
            return
        nbf = claims.get("nbf")
        good_until = min(float(exp), time.time() + self.max_age)
        not_before = float(nbf) if isinstance(nbf, int | float) else 0.0
        self._entries[header] = _Verified(sub, good_until, not_before)
        self._entries.move_to_end(header)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
