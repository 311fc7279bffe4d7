"""docs/API.md and /openapi.json say what the code does: the same endpoints and error codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from axrisi import create_app
from axrisi.config import Settings
from axrisi.web.openapi import DOCUMENT

ROOT = Path(__file__).resolve().parents[1]
API_DOC = (ROOT / "docs" / "API.md").read_text()


def served_routes() -> set[tuple[str, str]]:
    app = create_app(Settings(env="development", jwt_secret_key="x" * 40))
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<[^>]+>", "{}", rule.rule)
        routes |= {(method, path) for method in rule.methods or () if method in
                   ("GET", "POST", "DELETE", "PUT", "PATCH")}
    return routes


def documented_routes() -> set[tuple[str, str]]:
    """The rows of docs/API.md's endpoint table (before the "Not yet" section)."""
    table = API_DOC.split("## Authentication")[0]
    rows = re.findall(r"^\| `(GET|POST|DELETE|PUT|PATCH) ([^`]+)` \|", table, re.M)
    return {(method, re.sub(r"<[^>]+>", "{}", path)) for method, path in rows}


def test_docs_api_lists_exactly_the_served_endpoints() -> None:
    served = served_routes() | {("GET", "/static/axrisi-client.js")}
    assert documented_routes() == served - {("GET", "/static/{}")}


def test_openapi_describes_exactly_the_served_endpoints() -> None:
    document = json.loads(DOCUMENT.read_text())
    described = {(method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
                 for path, item in document["paths"].items() for method in item}
    assert described == served_routes() - {("GET", "/")}


def test_every_error_code_in_the_docs_is_in_the_openapi_enum() -> None:
    document = json.loads(DOCUMENT.read_text())
    codes = set(document["components"]["schemas"]["Error"]["properties"]["code"]["enum"])
    documented = set(re.findall(r"^\| \d{3} \| `([a-z_]+)` \|", API_DOC, re.M))
    assert documented and documented <= codes
