"""Axrisi Stream: stream AI-generated text to browsers as Server-Sent Events.

Three rooms, wired together here (ARCHITECTURE.md has the map):

* ``axrisi.stream``: the engine. Streams in one worker: generations, event logs, relays, the
  client watch. No Flask, no Redis; what it needs from outside is in ``stream/ports.py``.
* ``axrisi.shared``: deployment-wide state in Redis (ids, resumable events, per-user counters)
  and the fault model around it.
* ``axrisi.web``: the Flask shell. Routes, auth, validation, errors, quotas' 429s, CORS, logs,
  the demo page, readiness.

The imports live inside the factory on purpose: ``gunicorn.conf.py`` imports ``axrisi.config``
in the master, and importing this package must not pull in Flask or PyJWT there (PyJWT imports
``ssl``, which must not happen before gevent patches the workers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; raises :class:`axrisi.config.ConfigError` for an invalid setting."""
    from flask import Flask

    from .config import Settings
    from .providers import build_provider
    from .shared import connect
    from .stream.ids import LocalIds
    from .stream.registry import Retention, StreamRegistry
    from .users import user_key
    from .web import install

    settings = settings or Settings.from_env()
    shared = connect(settings, settings.redis_url) if settings.redis_url else None
    registry = StreamRegistry(
        provider=build_provider(settings),
        ids=shared.ids if shared is not None else LocalIds(),
        upstream_timeout=settings.upstream_timeout_seconds,
        retention=Retention(
            ttl_seconds=settings.resume_ttl_seconds,
            grace_seconds=settings.resume_grace_seconds,
            background_max_seconds=settings.background_max_seconds,
            unsure_seconds=settings.stream_lease_seconds,
            max_events=settings.resume_max_events,
            max_bytes=settings.resume_max_stream_kb * 1024,
            max_retained_bytes=settings.resume_max_memory_mb * 1024 * 1024,
        ),
        owner_key=user_key,
        mirror=shared.mirror if shared is not None else None,
        attached_elsewhere=shared.events.is_attached if shared is not None else None,
    )
    if shared is not None:
        shared.stops.listen(registry.stop)
    app = Flask(__name__)
    install(app, settings, registry, shared)
    return app
