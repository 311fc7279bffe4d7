"""Fixtures for browser tests: real headless Chromium (Playwright for Python) against the real
service (gunicorn + gevent) and the fake OpenAI-compatible upstream, all on loopback.

Chromium is Debian's ``chromium`` package, driven through ``executable_path``: ``playwright
install`` cannot download a browser on these machines. Without Chromium or Playwright the tests
are skipped, except under ``CI=true``, where a missing browser is a failure (a green CI must not
hide a browser suite that never ran).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.e2e.client import make_token
from tests.e2e.servers import ROOT, TEST_SECRET, Gunicorn
from tests.fake_upstream import FakeUpstream

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CLIENT_JS = ROOT / "axrisi" / "static" / "axrisi-client.js"
EXTENSION_DIR = ROOT / "examples" / "extension"
MAX_TEXT_CHARS = 5000
"""Small, so that the too-large test sends a small body."""


def _unavailable(reason: str) -> None:
    """Skip, or fail under CI=true: CI must run the browser suite, not skip it silently."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    """``AXRISI_CHROMIUM`` when set (another Chromium or Chrome binary), else Debian's chromium."""
    override = os.environ.get("AXRISI_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )


def token(sub: str = "browser-tester") -> str:
    """A token the test server accepts (it checks no audience or issuer, like development)."""
    return make_token(sub, aud=None, iss=None)


# ---- The browser ----------------------------------------------------------------------------


@pytest.fixture(scope="package")
def playwright() -> Iterator[Any]:
    """Playwright's sync API, for this package only: while it runs, its event loop counts as the
    thread's running loop, so ``asyncio.run`` in later test modules would fail."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed")
    if chromium_path() is None:
        _unavailable("chromium is not installed (apt-get install chromium)")
    manager = sync_playwright()
    instance = manager.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="package")
def browser(playwright: Any) -> Iterator[Any]:
    browser = playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield browser
    finally:
        browser.close()


class PageErrors:
    """What went wrong in a page: uncaught errors and dialogs (alert, confirm, prompt)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.console: list[str] = []


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh context and page; dialogs are recorded (and dismissed), errors collected."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()
    seen = PageErrors()
    page.axrisi_seen = seen
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.on("console", lambda msg: seen.console.append(f"{msg.type}: {msg.text}"))

    def on_dialog(dialog: Any) -> None:
        seen.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        yield page
    finally:
        context.close()


# ---- Two small web origins for CORS ----------------------------------------------------------

ORIGIN_PAGE = b"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>another origin</title></head><body><p>A page on another origin.</p></body></html>"""


class _OriginHandler(BaseHTTPRequestHandler):
    """A page, and the client module (a page elsewhere would ship its own copy or a CDN's)."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path == "/":
            body, kind = ORIGIN_PAGE, "text/html; charset=utf-8"
        elif self.path == "/axrisi-client.js":
            body, kind = CLIENT_JS.read_bytes(), "text/javascript; charset=utf-8"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the API's name
        pass


class WebOrigin:
    """``http://127.0.0.1:<port>`` served by Python's http.server in a thread."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _OriginHandler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> WebOrigin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="package")
def allowed_origin() -> Iterator[WebOrigin]:
    with WebOrigin() as origin:
        yield origin


@pytest.fixture(scope="package")
def other_origin() -> Iterator[WebOrigin]:
    with WebOrigin() as origin:
        yield origin


# ---- The service ------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def upstream() -> Iterator[FakeUpstream]:
    """A real OpenAI-compatible HTTP server on loopback."""
    with FakeUpstream() as fake:
        yield fake


def service_env(upstream: FakeUpstream, allowed_origin: WebOrigin, **extra: str
                ) -> dict[str, Any]:
    """The service in development mode (so the demo page carries a token), against the fake
    upstream, allowing one other origin to call the API."""
    return {
        "AXRISI_ENV": "development",
        "JWT_SECRET_KEY": TEST_SECRET,
        "JWT_AUDIENCE": None,
        "JWT_ISSUER": None,
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "sk-test-upstream-key-0123456789",
        "AXRISI_MODEL": "test-model",
        "AXRISI_HEARTBEAT_SECONDS": "1",
        "AXRISI_UPSTREAM_TIMEOUT_SECONDS": "5",
        "AXRISI_SEND_TIMEOUT_SECONDS": "2",
        "AXRISI_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
        "AXRISI_MAX_STREAMS_PER_USER": "0",
        "AXRISI_RATE_LIMIT": "100000/minute",
        "CORS_ORIGINS": allowed_origin.url,
        **extra,
    }


@pytest.fixture(scope="package")
def server(upstream: FakeUpstream, allowed_origin: WebOrigin) -> Iterator[Gunicorn]:
    """The service as the browser tests meet it (see :func:`service_env`)."""
    with Gunicorn(service_env(upstream, allowed_origin)) as gunicorn:
        yield gunicorn


@pytest.fixture
def extension_context(playwright: Any) -> Iterator[Any]:
    """A persistent Chromium profile with examples/extension loaded unpacked."""
    profile = tempfile.mkdtemp(prefix="axrisi-chromium-")
    context = playwright.chromium.launch_persistent_context(
        profile,
        executable_path=chromium_path(),
        headless=True,
        args=[*CHROMIUM_ARGS, f"--disable-extensions-except={EXTENSION_DIR}",
              f"--load-extension={EXTENSION_DIR}"],
    )
    context.set_default_timeout(10_000)
    try:
        yield context
    finally:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)
