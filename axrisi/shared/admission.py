"""A stream's admission through Redis in one round trip: its token quota, its open-stream slot
and its id.

Redis spends about as much CPU on a round trip as on what it carries (on the bench's VM a
``PING`` costs it about 30 µs, an ``INCRBY`` pipelined a hundred at a time under 1 µs), so what
a stream's start costs Redis is mostly how many round trips it makes. The checks used to be
one after another: the token quota (``limits``' own read), the slot (a script) and the id (a
``SET NX`` of the stream's record). Here they are one pipeline:

* one script in the user's hash slot checks the quota (``limits``' fixed-window counter, read
  where ``limits`` keeps it) and takes the slot, atomically, so a refused quota takes no slot;
* the id's ``SET NX`` in the stream's own slot rides beside it (a Redis Cluster sends the two to
  their masters at once). When the admission refuses, the claimed id is given back.

The request rate stays flask-limiter's, one round trip of its own before this one: the brief
asks for it, and its cost is measured in ``bench/`` (docs/benchmarks.md). While Redis does not
answer, :meth:`SharedAdmission.admit` says so (``None``) and the caller takes the per-process
path, as every other check does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from . import keys
from .counters import Lease, StreamSlots, TokenQuota
from .ids import Claim, SharedIds
from .store import SharedStore

_ADMIT = """
local quota = tonumber(ARGV[4])
if quota > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= quota then
  return {2, redis.call('PTTL', KEYS[2])}
end
local limit = tonumber(ARGV[1])
if limit <= 0 then return {0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then return {1, 0} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return {0, 0}
"""
"""KEYS: the user's slots, the user's token counter. ARGV: the slot limit (0: counted per
process, for ``GET /api/usage`` only), the lease in ms, the lease's id, the token quota (0: not
checked). Returns ``{0, 0}`` admitted, ``{1, 0}`` too many streams, ``{2, pttl}`` no tokens left
(``pttl``: the counter's window, in ms)."""

ADMITTED, TOO_MANY_STREAMS, QUOTA_SPENT = 0, 1, 2


@dataclass(frozen=True)
class Admission:
    """What Redis said: a lease and a claimed id, or why not."""

    lease: Lease | None
    stream_id: int | None
    """Claimed in Redis with the lease (its record written); None when refused."""
    quota_retry_after: int | None = None
    """Set when the token quota is spent: seconds until its window resets."""


class SharedAdmission:
    """The quota, the slot and the id of a new stream, in one round trip to Redis."""

    def __init__(self, store: SharedStore, slots: StreamSlots, tokens: TokenQuota,
                 ids: SharedIds, check_quota: bool) -> None:
        self.store = store
        self.slots = slots
        self.tokens = tokens
        self.ids = ids
        self.check_quota = check_quota
        self._admit = store.script(_ADMIT)

    def admit(self, user: str) -> Admission | None:
        """Admit ``user``'s next stream; None while Redis does not answer (the caller then
        takes the per-process path, whose checks fall back at once: one wait per request). The
        stream's owner, in its record, is the lease's user key, as the registry's is."""
        lease = self.slots.new_lease(user)
        claim = self.ids.propose(lease.user_key)
        return self.store.run(lambda client: self._run(client, user, lease, claim),
                              lambda: None, "admission", check=True)

    def _run(self, client: redis.Redis, user: str, lease: Lease, claim: Claim) -> Admission:
        checks = self.slots.limit > 0 or self.check_quota
        pipe = client.pipeline(transaction=False)
        if checks:
            self._admit.queue(pipe, [keys.stream_slots(lease.user_key),
                                     self.tokens.counter_key(user)],
                              [max(0, self.slots.limit), self.slots.lease_ms, lease.id,
                               self.tokens.item.amount if self.check_quota else 0])
        claim.queue(pipe)
        replies = pipe.execute()
        verdict, window_ms = (int(x) for x in replies[0]) if checks else (ADMITTED, 0)
        claimed = bool(replies[-1])
        if verdict != ADMITTED:
            if claimed:  # the id goes back: nobody will write this stream
                client.delete(keys.record(claim.id))
            retry = self._retry_after(window_ms) if verdict == QUOTA_SPENT else None
            return Admission(None, None, retry)
        stream_id = claim.id if claimed else self.ids.claim(client, lease.user_key)
        return Admission(self.slots.admitted(lease), stream_id)

    def _retry_after(self, window_ms: int) -> int:
        """Whole seconds until the quota's window resets, at least 1 (its full length when
        the counter has no expiry, which ``limits`` never leaves)."""
        if window_ms <= 0:
            return self.tokens.item.get_expiry()
        return max(1, math.ceil(window_ms / 1000))
