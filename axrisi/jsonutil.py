"""Compact JSON through orjson: the wire format of every event and error body.

orjson is several times faster than the standard library and emits compact UTF-8 directly,
which matters on the per-token path.
"""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    """Serialize to compact JSON bytes."""
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises :data:`JSONDecodeError` on bad input (invalid UTF-8 included)."""
    return orjson.loads(data)
