"""Stream ids unique across every worker and instance that shares one Redis.

One key holds the last id handed out; a small script makes the next one ``max(now_ms, last + 1)``
atomically. While Redis is down, ids come from the process (and a collision with another
instance becomes possible, though unlikely, for that time).
"""

from __future__ import annotations

import time

from ..stream.ids import LocalIds
from .store import SharedStore

_NEXT_ID = """
local now = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last >= now then now = last + 1 end
redis.call('SET', KEYS[1], now)
return now
"""


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
