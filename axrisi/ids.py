"""Stream ids (``commandId``): integers derived from the time in milliseconds, never repeated.

Within a process the next id is ``max(now_ms, last + 1)``, so two streams started in the same
millisecond still differ and ids keep increasing. Shared allocation across workers and instances
plugs in behind the same :class:`IdAllocator` interface.
"""

from __future__ import annotations

import time
from typing import Protocol


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
