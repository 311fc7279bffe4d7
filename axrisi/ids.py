"""Stream ids (``commandId``): integers derived from the time in milliseconds, never repeated.

The next id is ``max(now_ms, last + 1)``, so two streams started in the same millisecond still
differ and ids keep increasing. Without Redis, ``last`` lives in the process (one worker); with
Redis, in one key that a small script updates atomically, so ids are unique across every worker
and instance that shares it. While Redis is down, ids come from the process (and a collision
with another instance becomes possible, though unlikely, for that time).
"""

from __future__ import annotations

import time
from typing import Protocol

from .shared import SharedStore

_NEXT_ID = """
local now = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last >= now then now = last + 1 end
redis.call('SET', KEYS[1], now)
return now
"""


class IdAllocator(Protocol):
    """Hands out ``commandId`` values unique within its scope."""

    def next_id(self) -> int:
        """A new id, derived from the current time in milliseconds."""
        ...


class LocalIds:
    """Ids unique within this process: right for one worker without Redis."""

    def __init__(self) -> None:
        self._last = 0

    def next_id(self) -> int:
        """``max(now_ms, last + 1)``: time-derived, strictly increasing."""
        self._last = max(int(time.time() * 1000), self._last + 1)
        return self._last


class SharedIds:
    """Ids unique across everything that shares one Redis."""

    def __init__(self, store: SharedStore, key: str = "axrisi:last-command-id") -> None:
        self.store = store
        self.key = key
        self.local = LocalIds()
        self._script = store.client.register_script(_NEXT_ID)

    def next_id(self) -> int:
        now = int(time.time() * 1000)
        value = self.store.run(lambda _r: int(self._script(keys=[self.key], args=[now])),
                               self.local.next_id, "stream_id",
                               check=True)
        self.local._last = max(self.local._last, value)
        return value
