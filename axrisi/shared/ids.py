"""Stream ids unique across every worker and instance that shares one Redis, with no shared
counter.

Each worker proposes ``max(now_ms, last + 1)`` from its own clock and claims it by creating the
stream's record with ``SET NX`` (:func:`axrisi.shared.keys.record`, the stream's own hash slot):
the first claim wins, and a worker that loses (two instances in the same millisecond) proposes
the next millisecond. No key is touched by every stream start, so a Redis Cluster spreads them
over its masters; and the record the claim writes is the one resumes read (owner, worker), so
the claim costs one plain command and nothing else. While Redis does not answer, ids come from
the process alone (a collision with another instance becomes possible, though unlikely, for that
time), and the mirror writes the record when Redis is back.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from ..stream.ids import LocalIds
from . import keys
from .store import SharedStore

MAX_CLAIMS = 8
"""Proposals per id before giving up on Redis for this one: each loss means another instance
took that millisecond, so a long run of losses is a bug, not a race."""


class SharedIds:
    """Ids unique across everything that shares one Redis (or one cluster)."""

    def __init__(self, store: SharedStore, worker_id: str, ttl_seconds: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.ttl_ms = max(1000, int(ttl_seconds * 1000))
        self.local = LocalIds()

    def next_id(self, owner: str) -> int:
        """A new id for ``owner``'s stream, its record already in Redis (when Redis answers)."""
        return self.store.run(lambda r: self.claim(r, owner), self.local.next_id,
                              "stream_id", check=True)

    def propose(self, owner: str) -> Claim:
        """The next candidate, to be claimed with :meth:`Claim.queue` in a caller's pipeline
        (the admission's: one round trip for the slot and the id)."""
        return Claim(self.local.next_id(), keys.record_value(owner, self.worker_id), self.ttl_ms)

    def claim(self, client: redis.Redis, owner: str) -> int:
        """Claim candidates one after another until one is free."""
        for _ in range(MAX_CLAIMS):
            candidate = self.propose(owner)
            if client.set(keys.record(candidate.id), candidate.record, nx=True,
                          px=candidate.ttl_ms):
                return candidate.id
        raise redis.ResponseError("no free stream id in a row of claims")


@dataclass(frozen=True)
class Claim:
    """A proposed stream id and the record that claims it."""

    id: int
    record: str
    ttl_ms: int

    def queue(self, pipe: redis.client.Pipeline) -> None:
        """``SET NX`` of the stream's record: its reply is truthy when the id is ours."""
        pipe.set(keys.record(self.id), self.record, nx=True, px=self.ttl_ms)
