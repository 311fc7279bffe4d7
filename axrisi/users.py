"""The key a user is known by in shared state and logs: never the raw ``sub``."""

from __future__ import annotations

import hashlib


def user_key(user: str) -> str:
    """A stable, fixed-length key for a user: no raw ``sub`` in Redis keys or logs."""
    return hashlib.sha256(user.encode()).hexdigest()[:32]
