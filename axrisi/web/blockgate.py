"""An address past the failed-login limit is refused before Flask, and the attacker pays for it.

``loginguard.py`` remembers, per worker, the addresses past ``AXRISI_AUTH_FAILURE_LIMIT``. Refused
inside Flask, each request of a flood still cost the whole pipeline (request context, hooks,
routing, the error handler, the response object): one worker refused about 1,200 bad-token
requests a second at 99 % CPU, and good users' time to first token went from 7 ms to 136 ms.
:class:`BlockGate` is WSGI middleware between the client-address resolution (``clientaddress.py``
sets ``REMOTE_ADDR``) and Flask::

    gunicorn → trust_proxies (REMOTE_ADDR) → BlockGate → Flask (… auth: guard.check / failed)

For a request to ``/api/`` (every route there authenticates, so the path's prefix is the test, and
a path there that does not exist gets the 429 where Flask would say 404; a preflight ``OPTIONS``
never authenticates, so it goes on to Flask and its CORS answer) from a remembered address it
reads ``REMOTE_ADDR``,
the path, the method and a few headers, and answers with a body built once:

* the contract's ``429 {"error": ..., "code": "rate_limited"}`` with ``Retry-After`` in whole
  seconds, ``X-Request-ID`` (the client's own when sane, by ``requestlog.request_id``), and the
  CORS headers flask-cors would add for an allowed ``Origin`` (:class:`CorsHeaders`);
* counted as before: ``axrisi_auth_refusals_total`` and the aggregate log line (both by
  :meth:`LoginGuard.refusal`), ``axrisi_rejections_total{code="rate_limited"}`` and
  ``axrisi_streams_total{outcome="limited"}`` (as ``errors.json_error`` counts a 429); no access
  line of its own, as before;
* **held** for between half of :data:`HOLD_SECONDS` and all of it, at random (never past the
  block's end, so never past its ``Retry-After``) in a sleeping greenlet, which costs no CPU, and
  then the connection is **closed** (gunicorn writes ``Connection: close``): a client gets at most
  one or two refusals a second per connection, and each new connection costs it a handshake. 50
  keep-alive connections that got about 1,200 refusals a second from the Flask path get about 67.
  The random part is there because a flood's connections are blocked at one moment: held for
  exactly one second, their refusals all woke together every second (measured: all 50 within
  one 50 ms), a burst of work that a good user's request could land in.

**The bound.** Each held refusal keeps one of the worker's ``worker_connections``
(``gunicorn.conf.py``: ``AXRISI_MAX_STREAMS`` + 1,000, the 1,000 for short requests). At most
:data:`MAX_HELD` are held at once per worker; past that a refusal is answered at once, and its
connection still closed, so the tarpit never takes more than half of the room left for short
requests, whatever the streams hold. An attacker with more connections than that is not paced
on the rest: they cost the worker this path (no Flask) and a new connection per refusal, as fast
as the attacker reconnects. Past that many connections from one address, the limit belongs in
front of the service (nginx's ``limit_conn``, a PaaS router's).

The hold and the close need gunicorn's gevent worker: the hold only where gevent patched the
sockets (elsewhere a sleep would block a thread), the close through gunicorn's ``Response``
(``force_close``, reached as ``start_response.__self__``: gunicorn drops a ``Connection`` header
an application sets, PEP 3333 forbids it, and ``tests/e2e/test_login_guard.py`` checks the close
against the pinned gunicorn). A body the client sent is read first (up to :data:`DRAIN_BYTES`,
usually already in gunicorn's buffer), so that closing does not reset the connection under the
429.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask

from .. import jsonutil, metrics
from ..config import Settings
from .loginguard import REFUSAL, LoginGuard, retry_after
from .requestlog import request_id

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

HOLD_SECONDS = 1.0
"""How long a refusal is held before it is sent at most (at least half; never past the block's
end)."""
MAX_HELD = 500
"""Refusals held at once per worker (half of the 1,000 connections ``gunicorn.conf.py`` leaves
for short requests); past that they are answered at once."""
DRAIN_BYTES = 64 * 1024
"""A request body up to this size is read before the connection closes (a bigger one is not)."""
DRAIN_SECONDS = 0.25
"""How long reading that body may take."""
STATUS = "429 Too Many Requests"

Sleep = Callable[[float], Any]


def _gevent_sleep() -> Sleep | None:
    """gevent's sleep where gevent patched this process's sockets (gunicorn's gevent worker)."""
    from gevent import monkey, sleep

    return sleep if monkey.is_module_patched("socket") else None


class CorsHeaders:
    """The headers flask-cors adds to an ``/api/`` answer (``cors.py``), computed by flask-cors's
    own functions from the same options (``cors.options``), for answers that never reach Flask.
    ``tests/test_blockgate.py`` compares both paths' headers for allowed, refused and wildcard
    origins."""

    def __init__(self, app: Flask, settings: Settings) -> None:
        from flask_cors.core import get_cors_options

        from . import cors

        found = cors.options(settings)
        self.options = get_cors_options(app, found, {"origins": found["origins"]})

    @classmethod
    def for_app(cls, app: Flask, settings: Settings) -> CorsHeaders | None:
        """None where ``CORS_ORIGINS`` is unset (``cors.py`` then adds nothing either)."""
        return cls(app, settings) if settings.cors_origins else None

    def __call__(self, environ: WSGIEnvironment) -> list[tuple[str, str]]:
        if not environ.get("HTTP_ORIGIN"):
            return []
        from flask_cors.core import get_cors_headers
        from werkzeug.datastructures import EnvironHeaders

        found = get_cors_headers(self.options, EnvironHeaders(environ),
                                 environ.get("REQUEST_METHOD", ""))
        return [(name, str(value)) for name, value in found.items(multi=True)]


class BlockGate:
    """WSGI middleware: a remembered address's ``/api/`` request gets the 429 here (see above)."""

    def __init__(self, app: WSGIApplication, guard: LoginGuard, cors: CorsHeaders | None = None,
                 hold_seconds: float = HOLD_SECONDS, max_held: int = MAX_HELD,
                 sleep: Sleep | None = None) -> None:
        self.app = app
        self.guard = guard
        self.cors = cors
        self.hold_seconds = hold_seconds
        self.max_held = max_held
        self.held = 0
        """Refusals being held now (greenlets of one worker: no lock needed)."""
        self._sleep = sleep
        self._sleep_known = sleep is not None
        self.body = jsonutil.dumps({"error": REFUSAL, "code": "rate_limited"})
        self._length = str(len(self.body))
        self._rejections = metrics.REJECTIONS.labels("rate_limited")
        self._limited = metrics.STREAMS.labels("limited")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        if (environ.get("PATH_INFO", "").startswith("/api/")
                and environ.get("REQUEST_METHOD") != "OPTIONS"):
            wait = self.guard.refusal(environ.get("REMOTE_ADDR") or "")
            if wait is not None:
                return self._refuse(environ, start_response, wait)
        return self.app(environ, start_response)

    def _refuse(self, environ: WSGIEnvironment, start_response: StartResponse, wait: float
                ) -> list[bytes]:
        self._rejections.inc()
        self._limited.inc()
        sleep = self._cooperative_sleep()
        spread = self.hold_seconds * (0.5 + random.random() / 2)  # spreads wake-ups: no secret
        hold = min(spread, wait) if sleep is not None else 0.0
        if hold > 0 and self.held < self.max_held:
            assert sleep is not None
            self.held += 1
            try:
                sleep(hold)
                _drain(environ, cooperative=True)
            finally:
                self.held -= 1
        else:
            hold = 0.0
            _drain(environ, cooperative=sleep is not None)
        _close_after(start_response)
        headers = [("Content-Type", "application/json"), ("Content-Length", self._length),
                   ("Retry-After", retry_after(wait - hold)),
                   ("X-Request-ID", request_id(environ.get("HTTP_X_REQUEST_ID")))]
        if self.cors is not None:
            headers.extend(self.cors(environ))
        start_response(STATUS, headers)
        return [self.body]

    def _cooperative_sleep(self) -> Sleep | None:
        # Looked up at the first refusal, not at start: with --preload the app is built in the
        # master, before the worker's gevent patches.
        if not self._sleep_known:
            self._sleep, self._sleep_known = _gevent_sleep(), True
        return self._sleep


def _close_after(start_response: StartResponse) -> None:
    """Have gunicorn close the connection after this response (elsewhere: nothing)."""
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if callable(force_close):
        force_close()


def _drain(environ: WSGIEnvironment, cooperative: bool) -> None:
    """Read a small request body, so that closing the connection does not reset it (a reset can
    discard the 429 before the client reads it). Best effort: a body that is big, still to be
    asked for (``Expect: 100-continue``), slow or broken is left alone."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if not 0 < length <= DRAIN_BYTES or "100-continue" in environ.get("HTTP_EXPECT", "").lower():
        return
    stream = environ.get("wsgi.input")
    if stream is None:
        return
    if not cooperative:
        with contextlib.suppress(OSError, ValueError):
            stream.read(length)
        return
    from gevent import Timeout

    # Whatever the read fails with (the client left, gunicorn's parser errors), the answer is
    # the same 429 on a connection about to close.
    with contextlib.suppress(Exception, Timeout), Timeout(DRAIN_SECONDS):
        stream.read(length)
