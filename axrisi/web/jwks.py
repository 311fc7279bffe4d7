"""Verification keys from an identity provider's JWKS document (``JWT_JWKS_URL``).

Auth0, Clerk, Supabase, Firebase, Cognito and Keycloak publish their signing keys as a JWKS
document and rotate them. PyJWT's ``PyJWKClient`` fetches and parses the document; this class
decides when to, so that:

* keys are kept ``AXRISI_JWKS_CACHE_SECONDS`` and then fetched again, and a token whose ``kid``
  is not among them triggers at most one fetch per ``AXRISI_JWKS_REFETCH_SECONDS`` (for the
  whole worker: a flood of made-up ``kid``s is not a flood of fetches). 5 s by default, as the
  contract says: a token signed with a newly published key is accepted within about 5 s of the
  last fetch, whatever made that fetch (an earlier rotation, the cache's expiry, a made-up
  ``kid``);
* while the JWKS host is unreachable, or serves a malformed document, the keys already fetched
  keep working (a failed fetch is retried no more often than a refetch);
* every failure is the contract's one 401 (raised by the caller).

One fetch at a time per worker; the others wait for it. Nothing about keys or tokens is logged.
"""

from __future__ import annotations

import logging
import time

from gevent.lock import BoundedSemaphore
from jwt import InvalidTokenError, PyJWK, PyJWKClient
from jwt.exceptions import PyJWKClientError, PyJWKError, PyJWKSetError

log = logging.getLogger(__name__)

FETCH_TIMEOUT_SECONDS = 5.0


class UnknownKey(InvalidTokenError):
    """No key for this token (unknown or missing ``kid``, or none fetched yet): an invalid
    token like any other, so the caller's one 401 covers it."""


class JwksKeys:
    """The signing keys of one JWKS document, by ``kid``."""

    def __init__(self, url: str, cache_seconds: float = 300.0,
                 refetch_seconds: float = 5.0) -> None:
        self.client = PyJWKClient(url, cache_jwk_set=False, timeout=FETCH_TIMEOUT_SECONDS)
        self.cache_seconds = cache_seconds
        self.refetch_seconds = refetch_seconds
        self.keys: dict[str, PyJWK] = {}
        self.fetches = 0
        self._fetched_at = float("-inf")
        self._tried_at = float("-inf")
        self._lock = BoundedSemaphore(1)

    def key_for(self, kid: object) -> PyJWK:
        """The key for a token's ``kid``; raises :class:`UnknownKey`."""
        if not isinstance(kid, str) or not kid:
            raise UnknownKey()
        if time.monotonic() - self._fetched_at > self.cache_seconds:
            self._refresh()
        key = self.keys.get(kid)
        if key is None:
            self._refresh()  # a rotation: at most once per refetch interval
            key = self.keys.get(kid)
        if key is None:
            raise UnknownKey()
        return key

    def _refresh(self) -> None:
        """Fetch the document, unless a fetch was tried less than a refetch interval ago."""
        with self._lock:
            now = time.monotonic()
            if now - self._tried_at < self.refetch_seconds:
                return
            self._tried_at = now
            self.fetches += 1
            try:
                jwk_set = self.client.get_jwk_set(refresh=True)
            except (PyJWKClientError, PyJWKSetError, PyJWKError, ValueError) as error:
                log.warning("could not fetch the JWKS document (%s); keeping %d keys",
                            type(error).__name__, len(self.keys))
                return
            keys = {jwk.key_id: jwk for jwk in jwk_set.keys
                    if jwk.key_id and jwk.public_key_use in (None, "sig")}
            if not keys:
                log.warning("the JWKS document has no signing key; keeping %d keys",
                            len(self.keys))
                return
            self.keys = keys
            self._fetched_at = now
