"""docs/API.md and /openapi.json say what the code does: the same endpoints, the same error codes
(read from the code's own error definitions), the same stream event codes, X-Request-ID on every
answer, and the failed-login 429 wherever a token is checked."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask

from axrisi import create_app
from axrisi.config import Settings
from axrisi.web.auth import authenticated
from axrisi.web.openapi import DOCUMENT

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "axrisi"
API_DOC = (ROOT / "docs" / "API.md").read_text()
OPENAPI: dict[str, Any] = json.loads(DOCUMENT.read_text())
METHODS = ("GET", "POST", "DELETE", "PUT", "PATCH")

ERROR_FACTORIES = {"ApiError", "json_error"}
"""Calls that make an HTTP error answer from a (status, code, sentence)."""
EVENT_CODE_CALLS = {"ProviderError", "Interrupted", "interrupt"}
"""Calls that end a stream with a terminal error event whose code is their first argument."""


# --- docs/API.md ---------------------------------------------------------------------------------

def doc_section(heading: str) -> str:
    """The text under a heading of docs/API.md, up to the next heading of its level or above."""
    level = heading.split(" ")[0]
    start = API_DOC.index("\n" + heading + "\n")
    rest = API_DOC[start + len(heading) + 2:]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def documented_routes() -> set[tuple[str, str]]:
    """The rows of docs/API.md's endpoint table."""
    rows = re.findall(r"^\| `(GET|POST|DELETE|PUT|PATCH) ([^`]+)` \|", doc_section("## Endpoints"),
                      re.M)
    return {(method, re.sub(r"<[^>]+>", "{}", path)) for method, path in rows}


def documented_auth() -> dict[tuple[str, str], str]:
    """The endpoint table's auth column, by route."""
    rows = re.findall(r"^\| `(GET|POST|DELETE|PUT|PATCH) ([^`]+)` \| ([^|]+) \|",
                      doc_section("## Endpoints"), re.M)
    return {(method, re.sub(r"<[^>]+>", "{}", path)): auth.strip() for method, path, auth in rows}


def documented_errors() -> set[tuple[int, str]]:
    """The (status, code) rows of docs/API.md's error table."""
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", doc_section("## Errors"), re.M)
    return {(int(status), code) for status, code in rows}


def documented_event_codes() -> set[str]:
    """The codes of the stream's terminal error events in docs/API.md ("The stream")."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", doc_section("### The stream"), re.M))


# --- the code ------------------------------------------------------------------------------------

def modules(under: Path = PACKAGE) -> Iterator[tuple[Path, ast.Module]]:
    """Every module of the package under ``under``, parsed."""
    for path in sorted(under.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def callee(call: ast.Call) -> str:
    """The called name: ``f`` for ``f(...)`` and ``x.f(...)``."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def constant(node: ast.AST | None, kind: type) -> Any:
    """The literal's value when ``node`` is a literal of ``kind``, else None."""
    if isinstance(node, ast.Constant) and type(node.value) is kind:
        return node.value
    return None


def api_error_classes(trees: list[ast.Module]) -> set[str]:
    """ApiError and the classes derived from it, at any depth."""
    found = {"ApiError"}
    classes = [node for tree in trees for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    while True:
        more = {c.name for c in classes
                if any(isinstance(b, ast.Name) and b.id in found for b in c.bases)} - found
        if not more:
            return found
        found |= more


def error_calls(trees: list[ast.Module]) -> Iterator[ast.Call]:
    """``ApiError(...)``/``json_error(...)`` calls, and ``super().__init__(...)`` in subclasses."""
    subclasses = api_error_classes(trees) - {"ApiError"}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in subclasses:
                yield from (call for call in ast.walk(node)
                            if isinstance(call, ast.Call) and callee(call) == "__init__")
            elif isinstance(node, ast.Call) and callee(node) in ERROR_FACTORIES:
                yield node


def code_table(table: ast.Dict) -> dict[int, str] | None:
    """``{status: (code, sentence), ...}`` as ``{status: code}``; None for any other dict."""
    pairs = {constant(key, int): constant(value.elts[0], str)
             if isinstance(value, ast.Tuple) and value.elts else None
             for key, value in zip(table.keys, table.values, strict=True)}
    return pairs if pairs and None not in pairs and None not in pairs.values() else None


def code_tables(trees: list[ast.Module]) -> dict[str, dict[int, str]]:
    """Literal tables ``{status: (code, sentence)}`` (errors.py's generic codes), by name."""
    tables = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
                table = code_table(node.value)
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if table is not None:
                    tables |= {t.id: table for t in targets if isinstance(t, ast.Name)}
    return tables


def table_fallbacks(trees: list[ast.Module], tables: set[str]) -> set[str]:
    """Codes given as the default of ``TABLE.get(status, (code, ...))``: any other status."""
    return {constant(call.args[1].elts[0], str)
            for tree in trees for call in ast.walk(tree)
            if isinstance(call, ast.Call) and callee(call) == "get" and len(call.args) == 2
            and isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
            and call.func.value.id in tables and isinstance(call.args[1], ast.Tuple)}


def produced_errors() -> set[tuple[int | None, str]]:
    """Every (status, code) the web layer can answer; None: any status the framework raises."""
    trees = [tree for _path, tree in modules(PACKAGE / "web")]
    pairs: set[tuple[int | None, str]] = set()
    for call in error_calls(trees):
        code = constant(call.args[1], str) if len(call.args) > 1 else None
        if code is not None:
            pairs.add((constant(call.args[0], int), code))
    tables = code_tables(trees)
    pairs |= {(status, code) for table in tables.values() for status, code in table.items()}
    pairs |= {(None, code) for code in table_fallbacks(trees, set(tables))}
    return pairs


def produced_codes() -> set[str]:
    return {code for _status, code in produced_errors()}


def emitted_event_codes() -> set[str]:
    """Every code a stream's terminal ``error`` event can carry: the engine's interrupts and
    failures, the providers' errors, and the literal events of the engine and the shared state."""
    codes: set[str] = set()
    for path, tree in modules():
        engine = path.parent.name in ("stream", "shared")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and callee(node) in EVENT_CODE_CALLS and node.args:
                codes.add(constant(node.args[0], str))
            elif isinstance(node, ast.Dict) and engine:
                codes |= {constant(v, str) for k, v in zip(node.keys, node.values, strict=True)
                          if constant(k, str) == "code"}
    return codes - {None}


def the_app() -> Flask:
    return create_app(Settings(env="development", jwt_secret_key="x" * 40))


def served_routes() -> set[tuple[str, str]]:
    routes = set()
    for rule in the_app().url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<[^>]+>", "{}", rule.rule)
        routes |= {(method, path) for method in rule.methods or () if method in METHODS}
    return routes


def is_authenticated(view: Callable[..., Any] | None) -> bool:
    """Whether ``auth.authenticated`` wraps the view (at any depth of decorators)."""
    checking = authenticated(lambda: None).__code__
    while view is not None:
        if getattr(view, "__code__", None) is checking:
            return True
        view = getattr(view, "__wrapped__", None)
    return False


def authenticated_routes() -> set[tuple[str, str]]:
    app = the_app()
    return {(method, re.sub(r"<[^>]+>", "{}", rule.rule))
            for rule in app.url_map.iter_rules() if rule.endpoint != "static"
            and is_authenticated(app.view_functions[rule.endpoint])
            for method in rule.methods or () if method in METHODS}


# --- the OpenAPI document ------------------------------------------------------------------------

def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (and the ones it leads to)."""
    while "$ref" in node:
        target: Any = OPENAPI
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def all_responses() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every response of every operation, and the reusable ones, resolved, with a label."""
    for method, path, operation in operations():
        for status, response in operation["responses"].items():
            yield f"{method} {path} {status}", resolve(response)
    for name, response in OPENAPI["components"].get("responses", {}).items():
        yield f"components/responses/{name}", resolve(response)


def example_codes(response: dict[str, Any]) -> set[str]:
    """The ``code`` of a JSON response's example(s)."""
    body = response.get("content", {}).get("application/json", {})
    values = [body["example"]] if "example" in body else []
    values += [example["value"] for example in body.get("examples", {}).values()]
    return {value["code"] for value in values if isinstance(value, dict) and "code" in value}


def route_of(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


# --- the tests -----------------------------------------------------------------------------------

def test_docs_api_lists_exactly_the_served_endpoints() -> None:
    served = served_routes() | {("GET", "/static/axrisi-client.js")}
    assert documented_routes() == served - {("GET", "/static/{}")}


def test_openapi_describes_exactly_the_served_endpoints() -> None:
    described = {(method, route_of(path)) for method, path, _operation in operations()}
    assert described == served_routes() - {("GET", "/")}


def test_the_code_produces_the_error_codes_the_collector_expects_to_find() -> None:
    """The collector reads ApiError subclasses, factories and errors.py's generic table."""
    produced = produced_errors()
    assert {(401, "unauthorized"), (400, "invalid_json"), (500, "internal"),
            (400, "bad_request")} <= produced


def test_the_docs_error_table_lists_exactly_the_codes_the_code_produces() -> None:
    """Every code the code answers has a row with its status; every row is answered by the code."""
    produced, documented = produced_errors(), documented_errors()
    codes = {code for _status, code in documented}
    assert codes == produced_codes(), f"not in docs/API.md's error table: " \
        f"{produced_codes() - codes}; never answered by the code: {codes - produced_codes()}"
    missing = {(status, code) for status, code in produced if status is not None} - documented
    assert not missing, f"docs/API.md's error table lacks {sorted(missing)}"
    anywhere = {code for status, code in produced if status is None}
    unknown = {(s, c) for s, c in documented if (s, c) not in produced and c not in anywhere}
    assert not unknown, f"docs/API.md's error table has rows the code never answers: {unknown}"


def test_the_openapi_error_enum_is_exactly_the_codes_the_code_produces() -> None:
    enum = OPENAPI["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
    assert len(enum) == len(set(enum))
    assert set(enum) == produced_codes(), f"only in the enum: {set(enum) - produced_codes()}, " \
        f"only in the code: {produced_codes() - set(enum)}"


def test_openapi_examples_pair_codes_with_statuses_the_code_answers_them_with() -> None:
    produced = produced_errors()
    for method, path, operation in operations():
        for status, response in operation["responses"].items():
            for code in example_codes(resolve(response)):
                assert {(int(status), code), (None, code)} & produced, \
                    f"{method} {path} {status} shows {code!r}, which the code never answers so"


def test_the_stream_event_codes_are_exactly_what_the_engine_emits() -> None:
    emitted = emitted_event_codes()
    assert {"cancelled", "upstream_error", "shutting_down"} <= emitted
    enum = OPENAPI["components"]["schemas"]["ErrorEvent"]["properties"]["code"]["enum"]
    assert set(enum) == emitted, f"OpenAPI's ErrorEvent codes {sorted(enum)}, emitted {emitted}"
    assert documented_event_codes() == emitted, f"docs/API.md's event codes, emitted {emitted}"


def test_every_openapi_response_declares_x_request_id() -> None:
    """requestlog.py puts it on every answer: every response must say so, as required."""
    for label, response in all_responses():
        header = response.get("headers", {}).get("X-Request-ID")
        assert header is not None, f"{label} does not declare X-Request-ID"
        assert resolve(header).get("required") is True, label


def test_every_authenticated_operation_declares_401_and_the_failed_login_429() -> None:
    """``@authenticated`` views count failed logins per address: each can answer both."""
    authenticated = authenticated_routes()
    assert authenticated
    for method, path, operation in operations():
        if (method, route_of(path)) not in authenticated:
            continue
        responses = operation["responses"]
        assert "401" in responses and "429" in responses, f"{method} {path}"
        assert "rate_limited" in example_codes(resolve(responses["429"])), f"{method} {path}"
        assert operation.get("security", OPENAPI["security"]) == [{"bearer": []}], path


def test_the_docs_say_which_endpoints_need_a_token() -> None:
    authenticated = authenticated_routes()
    for route, auth in documented_auth().items():
        assert (auth == "bearer JWT") == (route in authenticated), route


def test_every_openapi_operation_declares_the_internal_500() -> None:
    """errors.py answers any unexpected exception with 500 internal, on every route."""
    for method, path, operation in operations():
        assert "internal" in example_codes(resolve(operation["responses"].get("500", {}))), \
            f"{method} {path}"
