"""The Flask shell: HTTP in and out around the streaming engine and the shared state.

:func:`install` puts everything on an app; views reach the pieces through :func:`services`
(``services.py``), one typed record, instead of string keys in ``app.extensions``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from flask import Flask

from ..config import Settings
from ..shared import SharedState
from ..shared.counters import Lease
from ..stream.ending import StreamEnd
from ..stream.registry import Stream, StreamRegistry
from .blockgate import BlockGate, CorsHeaders
from .clientaddress import trust_proxies
from .lifecycle import Lifecycle
from .loginguard import LoginGuard
from .services import KEY, Services, services
from .tokencache import VerifiedTokens

__all__ = ["Services", "allow_direct_writes", "install", "services"]


def install(app: Flask, settings: Settings, registry: StreamRegistry,
            shared: SharedState | None) -> None:
    """Logging, errors, auth, quotas, the blueprints, CORS and the CLI, on ``app``."""
    from . import api, auth, cli, cors, demo, errors, openapi, ops, quotas, requestlog

    store = shared.store if shared is not None else None
    limits_ = quotas.Quotas(settings, store, shared.mirror if shared is not None else None,
                            shared.ids if shared is not None else None)

    def stream_ended(stream: Stream, end: StreamEnd) -> None:
        # The engine keeps the lease opaque (it imports nothing of ``shared``); the only one
        # that puts it there is api.run, with the Lease from Quotas.admit.
        lease = cast("Lease | None", stream.lease)
        limits_.stream_ended(stream.user, lease, end.tokens_used)

    registry.on_end = stream_ended
    guard = LoginGuard(settings.auth_failure_limit, store, settings.web_concurrency)
    app.extensions[KEY] = Services(settings, registry, limits_,
                                    Lifecycle(registry, settings.max_streams), shared, guard,
                                    VerifiedTokens(enabled=not settings.jwt_jwks_url))
    # Flask documents replacing wsgi_app with middleware; mypy sees a method assigned. Outermost
    # the client's address, then a blocked address's refusal before Flask (blockgate.py).
    app.wsgi_app = trust_proxies(  # type: ignore[method-assign,assignment]
        BlockGate(app.wsgi_app, guard, CorsHeaders.for_app(app, settings)),
        settings.trusted_proxies)
    requestlog.init_app(app)
    errors.init_app(app)
    auth.init_app(app, settings)
    if store is not None:
        app.before_request(store.begin_request)
    quotas.init_rate_limit(app, settings, store)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(openapi.bp)
    cors.init_app(app, settings)  # the browser side: CORS for /api/*, the demo page at /
    app.register_blueprint(demo.bp)
    cli.init_app(app)


def allow_direct_writes(app: Flask, cfg: Any) -> None:
    """Let the engine write events straight to clients' sockets (``stream/direct.py``) when this
    gunicorn worker serves plain HTTP/1.x: not TLS, HTTP/2 or the uwsgi protocol, whose bytes on
    the wire are not the body's. Called by the worker at start (``gunicorn.conf.py``)."""
    plain = (not cfg.is_ssl and getattr(cfg, "protocol", "http") == "http"
             and "h2" not in (getattr(cfg, "http_protocols", None) or ()))
    if plain:
        app.extensions[KEY] = replace(services(app), direct_writes=True)
