"""``GET /openapi.json``: the HTTP API as an OpenAPI 3.1 document, for generated clients, API
explorers and contract tests (``tests/e2e/test_openapi.py`` runs schemathesis against it).

The document is ``openapi.json`` beside this module, kept by hand next to docs/API.md; what
depends on the settings (the longest text) is filled in when it is served. ``tests/test_api_doc.py``
holds both to the code's routes and error codes, ``tests/test_openapi_answers.py`` to the routes'
real answers.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify

from .services import services

bp = Blueprint("openapi", __name__)

DOCUMENT = Path(__file__).with_name("openapi.json")


@cache
def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    return loaded


def document(max_text_chars: int) -> dict[str, Any]:
    """The document for a service whose ``text`` may be ``max_text_chars`` long."""
    doc = copy.deepcopy(_document())
    doc["components"]["schemas"]["RunRequest"]["properties"]["text"]["maxLength"] = \
        max_text_chars
    return doc


@bp.get("/openapi.json")
def openapi() -> Response:
    """The document, open to everybody (it describes only what the API does)."""
    return jsonify(document(services().settings.max_text_chars))
