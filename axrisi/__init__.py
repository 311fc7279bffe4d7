"""Axrisi Stream: stream AI-generated text to browsers as Server-Sent Events.

``create_app`` builds the Flask app from the environment's settings; each concept lives in its
own module with an ``init_app`` or a blueprint, as in Flask's tutorial app. The imports live
inside the factory on purpose: ``gunicorn.conf.py`` imports ``axrisi.config`` in the master, and
importing this package must not pull in Flask or PyJWT there (PyJWT imports ``ssl``, which must
not happen before gevent patches the workers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings


def follow_block_seconds(settings: Settings) -> float:
    """How long a follower through Redis blocks per read: short enough to send its heartbeat,
    renew its attachment within the grace, and look at the generating worker every second."""
    block = min(settings.heartbeat_seconds, 1.0)
    if settings.resume_grace_seconds > 0:
        block = min(block, settings.resume_grace_seconds / 3)
    return max(block, 0.05)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; raises :class:`axrisi.config.ConfigError` for an invalid setting."""
    from flask import Flask

    from . import api, auth, cli, errors, metrics, ops, quotas, requestlog
    from .config import Settings
    from .ids import IdAllocator, LocalIds, SharedIds
    from .lifecycle import Lifecycle
    from .mirror import EventMirror
    from .providers import build_provider
    from .resume import RedisEvents
    from .shared import SharedStore
    from .streams import Retention, Stream, StreamRegistry

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.extensions["axrisi.settings"] = settings
    requestlog.init_app(app)
    errors.init_app(app)
    auth.init_app(app, settings)
    store = SharedStore(settings.redis_url) if settings.redis_url else None
    if store is not None:
        metrics.REDIS_UP.set(1)
        store.listeners.append(lambda up: metrics.REDIS_UP.set(1 if up else 0))
    app.extensions["axrisi.shared"] = store
    if store is not None:
        app.before_request(store.begin_request)
    limits_ = quotas.Quotas(settings, store)
    app.extensions["axrisi.quotas"] = limits_
    quotas.init_rate_limit(app, settings, store)
    ids: IdAllocator = SharedIds(store) if store is not None else LocalIds()

    def stream_ended(stream: Stream) -> None:
        limits_.stream_ended(stream.user, stream.lease, StreamRegistry.tokens_used(stream))

    mirror = events = None
    if store is not None:
        mirror = EventMirror(store, settings.resume_ttl_seconds,
                             running_ttl_seconds=int(settings.upstream_timeout_seconds * 2),
                             max_events=settings.resume_max_events,
                             lease_seconds=settings.stream_lease_seconds)
        events = RedisEvents(store, mirror, settings.resume_ttl_seconds,
                             lease_seconds=settings.stream_lease_seconds,
                             block_seconds=follow_block_seconds(settings))
        mirror.start()
    app.extensions["axrisi.events"] = events
    app.extensions["axrisi.streams"] = StreamRegistry(
        provider=build_provider(settings),
        ids=ids,
        upstream_timeout=settings.upstream_timeout_seconds,
        retention=Retention(
            ttl_seconds=settings.resume_ttl_seconds,
            grace_seconds=settings.resume_grace_seconds,
            max_events=settings.resume_max_events,
            max_retained_bytes=settings.resume_max_memory_mb * 1024 * 1024,
        ),
        owner_key=quotas.user_key,
        on_end=stream_ended,
        mirror=mirror,
        attached_elsewhere=events.is_attached if events is not None else None,
    )
    registry = app.extensions["axrisi.streams"]
    app.extensions["axrisi.lifecycle"] = Lifecycle(registry, settings.max_streams)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    from . import cors, web  # the browser side: CORS for /api/*, the demo page at /

    cors.init_app(app, settings)
    app.register_blueprint(web.bp)
    cli.init_app(app)
    return app
