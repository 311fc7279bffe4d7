"""Giving freed memory back to the system after many streams' events were dropped at once.

A stream's events live in one ``bytearray`` (``eventlog.py``) that grows through the C
allocator's heap. When the streams a burst left behind expire together (200 stalled readers'
answers, say), their buffers are freed, but glibc keeps the freed pages in its heap: the
worker's memory stays at its peak, which reads as a leak and is one to the machine. glibc's
``malloc_trim(0)`` returns every whole free page of its heap; it walks the heap, so it runs at the
end of a batch of expiries that let at least ``TRIM_AFTER_BYTES`` go since the last time, never
per stream. Where there is no glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_AFTER_BYTES = 4 * 1024 * 1024


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class Reclaimer:
    """Counts the bytes dropped and trims the heap once enough of them were."""

    def __init__(self, after_bytes: int = TRIM_AFTER_BYTES) -> None:
        self.after_bytes = after_bytes
        self.dropped = 0
        self.trims = 0
        self._trim = _load_trim()

    def dropped_bytes(self, count: int) -> None:
        """``count`` bytes of events were let go."""
        self.dropped += count

    def settle(self) -> None:
        """A batch of drops is over: trim if enough was let go since the last trim."""
        if self.dropped >= self.after_bytes:
            self.dropped = 0
            if self._trim is not None:
                self._trim(0)
                self.trims += 1
