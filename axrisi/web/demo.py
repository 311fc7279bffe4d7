"""The demo page at ``GET /``: ``static/index.html``, with a dev token in development mode.

The page's script, styles and libraries are plain files under ``static/`` (Flask's static folder,
served at ``/static/...``). This blueprint only serves the page itself, so that it can

* fill ``<meta name="axrisi-dev-token">`` with a freshly minted token in development mode (and
  leave it empty otherwise), so that ``make run`` and a browser are all it takes to try a stream;
* send a Content-Security-Policy that allows scripts from this origin only: model output is
  untrusted, and even if the sanitizer had a bug, no injected inline script or handler could run.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from flask import Blueprint, Response, current_app
from markupsafe import escape

from ..config import Settings
from .services import services

bp = Blueprint("web", __name__)

# Some systems map .js to text/plain (or not at all) in their mime.types; ES modules are only
# executed when served with a JavaScript MIME type, so say it once, for every platform.
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")

DEV_TOKEN_META = '<meta name="axrisi-dev-token" content="">'

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
"""No inline script, no eval, no plugin, nothing from elsewhere; images from the model's
Markdown load only from this origin (no tracking pixels in an answer)."""


def _page() -> str:
    # Read per request (it is small): an edited page shows on reload, in development too.
    return (Path(current_app.static_folder or "") / "index.html").read_text(encoding="utf-8")


@bp.get("/")
def index() -> Response:
    """The demo page; in development mode its token field comes filled in."""
    page = _page()
    settings: Settings = services().settings
    # With JWT_PUBLIC_KEY the service only verifies tokens: it has no key to sign one with.
    if settings.development and not settings.jwt_public_key:
        from .auth import mint_token

        token = mint_token("dev")
        page = page.replace(
            DEV_TOKEN_META, f'<meta name="axrisi-dev-token" content="{escape(token)}">', 1
        )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # The page may hold a token: never let a shared cache keep it.
    response.headers["Cache-Control"] = "no-store"
    return response
