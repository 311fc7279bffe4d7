"""The Flask shell: HTTP in and out around the streaming engine and the shared state.

:func:`install` puts everything on an app; views reach the pieces through :func:`services`, one
typed record, instead of string keys in ``app.extensions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from flask import Flask, current_app

from ..config import Settings
from ..shared import SharedState
from ..stream.ending import StreamEnd
from ..stream.registry import Stream, StreamRegistry
from .lifecycle import Lifecycle
from .quotas import Quotas

_KEY = "axrisi"


@dataclass(frozen=True)
class Services:
    """What the views use, built once per app."""

    settings: Settings
    registry: StreamRegistry
    quotas: Quotas
    lifecycle: Lifecycle
    shared: SharedState | None


def services(app: Flask | None = None) -> Services:
    """The app's services (the current app's by default)."""
    return cast(Services, (app or current_app).extensions[_KEY])


def install(app: Flask, settings: Settings, registry: StreamRegistry,
            shared: SharedState | None) -> None:
    """Logging, errors, auth, quotas, the blueprints, CORS and the CLI, on ``app``."""
    from . import api, auth, cli, cors, demo, errors, ops, quotas, requestlog

    store = shared.store if shared is not None else None
    limits_ = quotas.Quotas(settings, store)

    def stream_ended(stream: Stream, end: StreamEnd) -> None:
        limits_.stream_ended(stream.user, stream.lease, end.tokens_used)

    registry.on_end = stream_ended
    app.extensions[_KEY] = Services(settings, registry, limits_,
                                    Lifecycle(registry, settings.max_streams), shared)
    requestlog.init_app(app)
    errors.init_app(app)
    auth.init_app(app, settings)
    if store is not None:
        app.before_request(store.begin_request)
    quotas.init_rate_limit(app, settings, store)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    cors.init_app(app, settings)  # the browser side: CORS for /api/*, the demo page at /
    app.register_blueprint(demo.bp)
    cli.init_app(app)
