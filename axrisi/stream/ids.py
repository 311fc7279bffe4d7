"""Stream ids (``commandId``): integers derived from the time in milliseconds, never repeated.

The next id is ``max(now_ms, last + 1)``, so two streams started in the same millisecond still
differ and ids keep increasing. Here ``last`` lives in the process: right for one worker without
Redis. ``axrisi.shared.ids`` claims each one in Redis, for every worker and instance that shares it.
"""

from __future__ import annotations

import time

from .ports import IdAllocator

__all__ = ["IdAllocator", "LocalIds"]


class LocalIds:
    """Ids unique within this process: right for one worker without Redis."""

    def __init__(self) -> None:
        self._last = 0

    def next_id(self, _owner: str = "") -> int:
        """``max(now_ms, last + 1)``: time-derived, strictly increasing."""
        self._last = max(int(time.time() * 1000), self._last + 1)
        return self._last
