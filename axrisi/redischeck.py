"""The start-up check of ``REDIS_URL``: one PING, before gunicorn forks its workers.

gunicorn's master must not import ``redis`` (it imports ``ssl``) before gevent patches the
workers, so ``gunicorn.conf.py`` runs the check in a child process (``python -m
axrisi.redischeck``, with the master's environment) and reads its verdict: :func:`check_in_child`.
The PING uses the options every client of the service uses (``Settings.redis_tls_options``).

What stops start-up (one sentence naming REDIS_URL, never its password):

* **credentials refused**: redis-py's ``AuthenticationError`` (``WRONGPASS``, ``NOAUTH``, a
  password Redis does not have);
* **an untrusted certificate**: the TLS handshake fails certificate verification (an unknown CA,
  a name the certificate is not for, an expired one);
* **a plain URL at a TLS port**: the plaintext PING gets no Redis reply (a TLS port resets or
  closes the connection, or sends bytes that are not RESP, or nothing), *and* a TLS handshake
  with the same address succeeds. The second look is what tells this from Redis being down:
  without it a closed connection could be a proxy whose Redis is away;
* **a TLS URL at a plain port**: the handshake fails (or hangs: plain Redis waits for a line
  end), *and* a plaintext PING at the same address gets a Redis reply;
* **another TLS handshake failure** that the server answered (an alert, say: it wants a client
  certificate).

Everything else (refused, timed out, a name that does not resolve, a connection closed with no
TLS behind it) is Redis being *down*: the service starts, says so in one warning line, and falls
back as ARCHITECTURE.md's "Redis: slow, down, back" table says. So is a Redis *answer* to the
PING other than PONG (``LOADING``, say): Redis is there.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

TIMEOUT_SECONDS = 2.0
"""For each connection the check makes (the PING, then at most one probe of the other
protocol): a Redis that does not answer within it is down, not misconfigured."""
CHILD_TIMEOUT_SECONDS = 30.0

OK, DOWN, FAULT = 0, 10, 11
"""The child's exit codes: start; start, with a warning line on stdout; stop, with the sentence
on stdout."""


class RedisCheckError(Exception):
    """REDIS_URL cannot work as configured; the message is the one sentence to print."""


def check_in_child(url: str) -> str | None:
    """Run :func:`main` in a child process with this process's environment (the caller
    imports nothing heavy); ``url`` is REDIS_URL, to keep its password out of what is said.

    Returns a warning line to log (Redis is down: start anyway), or None; raises
    :class:`RedisCheckError` when the service must not start. A check that breaks itself is
    a warning, not a refusal: the workers would meet the same Redis anyway.
    """
    try:
        result = subprocess.run(
            [sys.executable, "-m", "axrisi.redischeck"],
            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
            timeout=CHILD_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"The start-up check of REDIS_URL did not finish ({type(error).__name__}): " \
               "starting anyway."
    said = _scrub(result.stdout.strip(), url)
    if result.returncode == FAULT and said:
        raise RedisCheckError(said)
    if result.returncode == DOWN and said:
        return said
    if result.returncode == OK:
        return None
    last = _scrub((result.stderr.strip().splitlines() or ["no output"])[-1], url)
    return f"The start-up check of REDIS_URL failed ({last[:200]}): starting anyway."


def main() -> int:
    """The child: check REDIS_URL as the settings say, print what to say, exit with the verdict."""
    from .config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as error:  # the master checked them already
        print(error)
        return FAULT
    if not settings.redis_url:
        return OK
    verdict, text = check(settings.redis_url, settings.redis_tls_options())
    if text:
        print(_scrub(text, settings.redis_url))
    return verdict


def check(url: str, tls: dict[str, Any],
          timeout: float = TIMEOUT_SECONDS) -> tuple[int, str | None]:
    """One PING at ``url`` with ``tls``: (:data:`OK`, None), (:data:`DOWN`, a warning) or
    (:data:`FAULT`, the sentence)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    where = _where(url)
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout,
                                      retry=Retry(NoBackoff(), 0), health_check_interval=0, **tls)
    except ValueError as error:
        return FAULT, f"REDIS_URL is not a Redis URL that redis-py can read ({error})."
    try:
        client.ping()
    except redis.AuthenticationError as error:
        return FAULT, _refused_credentials(str(error), where)
    except redis.ResponseError:
        return OK, None  # an answer: Redis is there (LOADING, a busy script, ...)
    except (redis.RedisError, OSError) as error:
        return _diagnose(url, where, error, timeout)
    finally:
        client.close()
    return OK, None


def _refused_credentials(message: str, where: str) -> str:
    lowered = message.lower()
    if "without any password" in lowered or "no password is set" in lowered:
        what = "has no password set, and REDIS_URL gives one; remove it from the URL"
    elif "noauth" in lowered or "already authenticated" in lowered or "required" in lowered:
        what = "wants a password and REDIS_URL has none; copy the whole URL from the provider"
    else:
        what = ("refused the user name or password in REDIS_URL; copy the URL again from the "
                "provider (passwords rotate)")
    return f"REDIS_URL does not work: Redis at {where} {what}."


def _diagnose(url: str, where: str, error: BaseException,
              timeout: float) -> tuple[int, str | None]:
    import ssl

    causes = _causes(error)
    certificate = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
    if certificate is not None:
        why = str(certificate.verify_message or certificate.reason or "not verified").rstrip(".")
        return FAULT, (f"REDIS_URL does not work: the TLS certificate of Redis at {where} is not "
                       f"trusted ({why}); set AXRISI_REDIS_CA_FILE to the CA certificate that "
                       "signed it, or AXRISI_REDIS_TLS_VERIFY=0 to accept a provider's "
                       "self-signed certificate.")
    down = (f"Redis at {where} does not answer at start ({_reason(error)}): starting anyway; "
            "limits and resumes are per process until it answers.")
    if any(isinstance(c, (ConnectionRefusedError, socket.gaierror, FileNotFoundError))
           for c in causes):
        return DOWN, down
    split = urlsplit(url)
    host, port = split.hostname, split.port or 6379
    if host is None or split.scheme.lower() not in ("redis", "rediss"):
        return DOWN, down
    if split.scheme.lower() == "redis":
        if _speaks_tls(host, port, timeout):
            return FAULT, (f"REDIS_URL does not work: it is a plain redis:// URL, but Redis at "
                           f"{where} speaks TLS; use rediss:// (with AXRISI_REDIS_CA_FILE, or "
                           "AXRISI_REDIS_TLS_VERIFY=0 for a provider's self-signed certificate).")
        return DOWN, down
    if _speaks_plain_redis(host, port, timeout):
        return FAULT, (f"REDIS_URL does not work: it is a rediss:// (TLS) URL, but Redis at "
                       f"{where} answers without TLS; use redis://, or the provider's TLS port.")
    handshake = next((c for c in causes if isinstance(c, ssl.SSLError)
                      and not isinstance(c, (ssl.SSLEOFError, ssl.SSLZeroReturnError))), None)
    if handshake is not None:
        return FAULT, (f"REDIS_URL does not work: the TLS handshake with Redis at {where} "
                       f"failed ({handshake.reason or handshake}).")
    return DOWN, down


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Whether a TLS handshake with ``host:port`` gets a TLS answer (any certificate)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return True
    except ssl.SSLError as error:  # an alert is TLS too (a server that wants a client cert)
        return "ALERT" in (error.reason or "")
    except OSError:
        return False


def _speaks_plain_redis(host: str, port: int, timeout: float) -> bool:
    """Whether a plaintext PING at ``host:port`` gets a RESP reply (``+PONG``, ``-NOAUTH``)."""
    try:
        with socket.create_connection((host, port), timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while b"\r\n" not in reply and len(reply) < 512:
                chunk = sock.recv(512)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    line = reply.split(b"\r\n", 1)[0]
    return b"\r\n" in reply and line[:1] in (b"+", b"-") and line.isascii()


def _causes(error: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _reason(error: BaseException) -> str:
    innermost = _causes(error)[-1]
    text = str(innermost).strip() or type(innermost).__name__
    return text[:200]


def _where(url: str) -> str:
    """Where REDIS_URL points, without its credentials: ``host:port`` or the socket's path."""
    split = urlsplit(url)
    if split.scheme.lower() == "unix":
        return split.path or "the unix socket"
    try:
        port = split.port or 6379
    except ValueError:
        port = 6379
    return f"{split.hostname or 'localhost'}:{port}"


def _scrub(text: str, url: str) -> str:
    """``text`` without REDIS_URL's password, in case a message quoted it."""
    password = urlsplit(url).password
    for secret in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(str(secret), "***")
    return text


if __name__ == "__main__":
    sys.exit(main())
