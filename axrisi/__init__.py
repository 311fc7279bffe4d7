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


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; raises :class:`axrisi.config.ConfigError` for an invalid setting."""
    from flask import Flask

    from . import api, auth, cli, errors
    from .config import Settings
    from .ids import LocalIds
    from .providers import build_provider
    from .streams import StreamRegistry

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.extensions["axrisi.settings"] = settings
    errors.init_app(app)
    auth.init_app(app, settings)
    app.extensions["axrisi.streams"] = StreamRegistry(
        provider=build_provider(settings),
        ids=LocalIds(),
        upstream_timeout=settings.upstream_timeout_seconds,
        grace_seconds=settings.resume_grace_seconds,
    )
    app.register_blueprint(api.bp)
    cli.init_app(app)
    return app
