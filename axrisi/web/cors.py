"""CORS for ``/api/*`` with flask-cors, from ``CORS_ORIGINS``; nothing at all when it is unset.

Browsers call the API from other origins (a web page elsewhere, an extension page as
``chrome-extension://<id>``) with an ``Authorization`` header and a JSON body, so every such call
is preceded by a preflight ``OPTIONS``. The preflight is answered by Flask's automatic ``OPTIONS``
handling before any view runs, so it is never a 401: authentication happens in the views. Error
answers (401, 413, 429, ...) carry the CORS headers too, so a page can read their JSON body.

No credentials mode: the API takes bearer tokens, never cookies, so ``Allow-Credentials`` is not
sent and ``*`` is a valid (if broad) setting.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from flask_cors import CORS

from ..config import Settings

ALLOW_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID")
EXPOSE_HEADERS = ("X-Request-ID", "Retry-After")
METHODS = ("GET", "POST", "DELETE", "OPTIONS")
MAX_AGE_SECONDS = 600


def _pattern(origin: str) -> str | re.Pattern[str]:
    """An origin matched literally: flask-cors reads strings holding ``*``, ``?``, ``(`` ... as
    regular expressions (and matches them as prefixes), so such an origin is escaped and anchored
    instead of being trusted to mean what it looks like."""
    if origin == "*":
        return origin
    return re.compile(re.escape(origin) + r"\Z", re.IGNORECASE)


def options(settings: Settings) -> dict[str, Any]:
    """flask-cors's options for ``/api/*``: given to ``CORS`` here, and to flask-cors's header
    functions by ``blockgate.py`` for the refusals that never reach Flask."""
    return {
        "origins": [_pattern(o) for o in settings.cors_origins],
        "allow_headers": list(ALLOW_HEADERS),
        "expose_headers": list(EXPOSE_HEADERS),
        "methods": list(METHODS),
        "max_age": MAX_AGE_SECONDS,
        "supports_credentials": False,
        "always_send": False,
        "send_wildcard": False,
        "vary_header": True,
    }


def init_app(app: Flask, settings: Settings) -> None:
    """Allow ``settings.cors_origins`` to call ``/api/*``; do nothing when there are none."""
    if not settings.cors_origins:
        return
    found = options(settings)
    CORS(app, resources={r"/api/*": {"origins": found.pop("origins")}}, **found)
