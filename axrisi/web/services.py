"""The pieces the views use, as one typed record per app: ``services()`` instead of string keys
in ``app.extensions`` (built by :func:`axrisi.web.install`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from flask import Flask, current_app

from .tokencache import VerifiedTokens

if TYPE_CHECKING:
    from ..config import Settings
    from ..shared import SharedState
    from ..stream.registry import StreamRegistry
    from .lifecycle import Lifecycle
    from .loginguard import LoginGuard
    from .quotas import Quotas

KEY = "axrisi"


@dataclass(frozen=True)
class Services:
    """What the views use, built once per app."""

    settings: Settings
    registry: StreamRegistry
    quotas: Quotas
    lifecycle: Lifecycle
    shared: SharedState | None
    login_guard: LoginGuard
    verified_tokens: VerifiedTokens = field(default_factory=VerifiedTokens)
    """Tokens this worker verified a moment ago (``tokencache.py``; off with a JWKS)."""
    direct_writes: bool = False
    """The engine may write events straight to clients' sockets (``stream/direct.py``): set
    by :func:`axrisi.web.allow_direct_writes` when gunicorn serves plain HTTP/1.x."""


def services(app: Flask | None = None) -> Services:
    """The app's services (the current app's by default)."""
    return cast(Services, (app or current_app).extensions[KEY])
