"""Every setting the service reads, with its default, its parsing and its validation, in one place.

The service refuses to start on an invalid value, with one sentence that names the setting, so a
typo in a PaaS dashboard fails the deploy instead of a user's stream. This module imports nothing
heavy (no gevent, no ssl): ``gunicorn.conf.py`` loads it in the master process before gevent
patches anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

DEFAULT_MAX_STREAMS_FLOOR = 100
BYTES_PER_STREAM_BUDGET = 64 * 1024
"""What ``AXRISI_MAX_STREAMS`` assumes one open stream may cost, to size the default from memory."""

MIN_SECRET_BYTES = 32
ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA")


class ConfigError(ValueError):
    """An invalid setting; its message is the one sentence printed before the service exits."""


@dataclass(frozen=True)
class Settings:
    """The parsed environment. Built once per process by :meth:`from_env`."""

    env: str = "production"
    port: int = 8000
    web_concurrency: int = 1
    jwt_secret_key: str | None = None
    jwt_public_key: str | None = None
    jwt_algorithm: str = "HS256"
    """One algorithm; with ``JWT_JWKS_URL``, a comma-separated list of the allowed ones."""
    jwt_jwks_url: str | None = None
    jwks_cache_seconds: float = 300.0
    jwks_refetch_seconds: float = 5.0
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    model: str = "gpt-4o-mini"
    provider: str = "local"
    redis_url: str | None = None
    redis_ca_file: str | None = None
    """``AXRISI_REDIS_CA_FILE``: PEM CA certificates to trust for a ``rediss://`` REDIS_URL (the
    system's are trusted too)."""
    redis_tls_verify: bool = True
    """``AXRISI_REDIS_TLS_VERIFY``: False accepts any certificate (a provider's self-signed one)."""
    redis_cluster: bool = False
    """``AXRISI_REDIS_CLUSTER``: REDIS_URL names a node of a Redis Cluster (the client finds the
    others and follows the slots as they move)."""
    rate_limit: str = "30/minute;1000/day"
    max_streams_per_user: int = 3
    token_quota: str | None = None
    max_text_chars: int = 50_000
    heartbeat_seconds: float = 15.0
    send_timeout_seconds: float = 30.0
    upstream_timeout_seconds: float = 60.0
    cors_origins: tuple[str, ...] = ()
    metrics_token: str | None = None
    resume_ttl_seconds: int = 300
    resume_grace_seconds: float = 0.0
    background_max_seconds: float = 600.0
    max_streams: int = 1000
    local_pace_seconds: float = 0.03
    stream_lease_seconds: float = 60.0
    resume_max_events: int = 10_000
    resume_max_memory_mb: int = 64
    resume_max_stream_kb: int = 1024
    upstream_transport: str = "lean"
    auth_failure_limit: str = "60/minute"
    openai_fallback_base_url: str | None = None
    openai_fallback_api_key: str | None = None
    fallback_model: str | None = None
    greenlet_gauge: bool = False
    """``AXRISI_GREENLET_GAUGE``: count live greenlets at each scrape, a walk of the heap that
    holds the worker's loop (and every stream) for longer the more streams it has."""
    trusted_proxies: int | Literal["private"] = "private"
    """Whose ``X-Forwarded-For`` to believe: ``private`` (a connection from a loopback or
    private-network address, as PaaS routers and a proxy on the same host make), or that many hops
    (0: none). ``axrisi/web/clientaddress.py`` applies it."""
    local_model: str | None = None
    """``AXRISI_LOCAL_MODEL``: ``smollm2``, a GGUF file, or ``owner/repo/file.gguf`` (the Hub)."""
    local_summary: str = "extractive"
    local_model_input_tokens: int = 1024
    local_model_output_tokens: int = 512
    """``max_tokens``. To a five-sentence text, SmolLM2's longest answer that did not loop was
    371 tokens, and one that loops or wanders off goes on to the cap (``bench/repetition.py``).
    A rewrite or translation of a whole 1,024-token page is cut (a larger model may want more)."""
    local_model_slots: int = 2
    local_model_threads: int = 0
    """CPU threads for the model; 0: llama.cpp's choice (one per core)."""
    local_model_temperature: float = 0.2
    local_model_seed: int | None = None
    model_server_url: str | None = None
    """Where the managed model server answers (``.../v1``): set by gunicorn's master for its
    workers once it has started the server (``axrisi/modelserver.py``), never by an operator."""
    model_server_key: str | None = None
    """That server's API key, made up by the master for the run."""

    @property
    def development(self) -> bool:
        """Development mode: a made-up JWT secret is allowed and a token is printed."""
        return self.env == "development"

    @property
    def redis_tls(self) -> bool:
        """Whether REDIS_URL speaks TLS (``rediss://``): only then do the TLS settings apply."""
        return _is_tls(self.redis_url)

    @property
    def redis_tls_unverified(self) -> bool:
        """TLS to Redis that accepts any certificate: said once in the log at start."""
        return self.redis_tls and not self.redis_tls_verify

    def redis_tls_options(self, url: str | None = None) -> dict[str, Any]:
        """redis-py's TLS keyword arguments for ``url`` (REDIS_URL when not given), the one
        place they are made: every Redis client the service makes gets them
        (``shared/store.py``: the store's clients, the blocking readers, the limits' storages;
        ``redischeck.py``: the start-up check). Empty unless the URL is ``rediss://`` (a plain
        connection takes no ``ssl_*`` arguments)."""
        if not _is_tls(self.redis_url if url is None else url):
            return {}
        if not self.redis_tls_verify:
            return {"ssl_cert_reqs": "none", "ssl_check_hostname": False}
        options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if self.redis_ca_file:
            options["ssl_ca_certs"] = self.redis_ca_file
        return options

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read: the longest text JSON-escaped, plus room for the rest."""
        return self.max_text_chars * 6 + 64 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse and validate the environment; raise :class:`ConfigError` naming a bad setting."""
        e = _Env(os.environ if environ is None else environ)
        jwks_url = e.url("JWT_JWKS_URL")
        env = e.choice("AXRISI_ENV", ("production", "development"), "production")
        api_key, base_url = e.text("OPENAI_API_KEY"), e.url("OPENAI_BASE_URL")
        default_provider = "openai" if (api_key or base_url) else "local"
        workers = e.integer("WEB_CONCURRENCY", 1, low=1, high=256)
        settings = cls(
            env=env,
            port=e.integer("PORT", 8000, low=1, high=65535),
            web_concurrency=workers,
            jwt_secret_key=e.text("JWT_SECRET_KEY"),
            jwt_public_key=e.text("JWT_PUBLIC_KEY"),
            jwt_algorithm=(e.algorithms("JWT_ALGORITHM") if jwks_url else e.choice(
                "JWT_ALGORITHM", ("HS256", "HS384", "HS512", *ASYMMETRIC), None
            ) or ""),
            jwt_jwks_url=jwks_url,
            jwks_cache_seconds=e.number("AXRISI_JWKS_CACHE_SECONDS", 300.0, low=1.0),
            jwks_refetch_seconds=e.number("AXRISI_JWKS_REFETCH_SECONDS", 5.0, low=0.1),
            jwt_audience=e.text("JWT_AUDIENCE"),
            jwt_issuer=e.text("JWT_ISSUER"),
            openai_api_key=api_key,
            openai_base_url=base_url,
            model=e.text("AXRISI_MODEL") or "gpt-4o-mini",
            provider=e.choice("AXRISI_PROVIDER", ("openai", "local"), default_provider),
            redis_url=e.redis_url("REDIS_URL"),
            redis_ca_file=e.pem_file("AXRISI_REDIS_CA_FILE", "CA certificates"),
            redis_tls_verify=e.flag("AXRISI_REDIS_TLS_VERIFY", True),
            redis_cluster=e.flag("AXRISI_REDIS_CLUSTER", False),
            rate_limit=e.rate_limit("AXRISI_RATE_LIMIT", "30/minute;1000/day"),
            max_streams_per_user=e.integer("AXRISI_MAX_STREAMS_PER_USER", 3, low=0),
            token_quota=e.token_quota("AXRISI_TOKEN_QUOTA"),
            max_text_chars=e.integer("AXRISI_MAX_TEXT_CHARS", 50_000, low=1, high=10_000_000),
            heartbeat_seconds=e.number("AXRISI_HEARTBEAT_SECONDS", 15.0, low=0.05),
            send_timeout_seconds=e.number("AXRISI_SEND_TIMEOUT_SECONDS", 30.0, low=0.1),
            upstream_timeout_seconds=e.number("AXRISI_UPSTREAM_TIMEOUT_SECONDS", 60.0, low=0.1),
            cors_origins=e.origins("CORS_ORIGINS"),
            metrics_token=e.text("AXRISI_METRICS_TOKEN"),
            resume_ttl_seconds=e.integer("AXRISI_RESUME_TTL_SECONDS", 300, low=1),
            resume_grace_seconds=e.number("AXRISI_RESUME_GRACE_SECONDS", 0.0, low=0.0),
            background_max_seconds=e.number("AXRISI_BACKGROUND_MAX_SECONDS", 600.0, low=1.0),
            max_streams=e.integer("AXRISI_MAX_STREAMS", default_max_streams(workers), low=1),
            local_pace_seconds=e.number("AXRISI_LOCAL_PACE_SECONDS", 0.03, low=0.0, high=5.0),
            stream_lease_seconds=e.number("AXRISI_STREAM_LEASE_SECONDS", 60.0, low=1.0),
            resume_max_events=e.integer("AXRISI_RESUME_MAX_EVENTS", 10_000, low=10),
            resume_max_memory_mb=e.integer("AXRISI_RESUME_MAX_MEMORY_MB", 64, low=1),
            resume_max_stream_kb=e.integer("AXRISI_RESUME_MAX_STREAM_KB", 1024, low=16),
            upstream_transport=e.choice("AXRISI_UPSTREAM_TRANSPORT", ("lean", "urllib3"), "lean"),
            auth_failure_limit=e.rate_limit("AXRISI_AUTH_FAILURE_LIMIT", "60/minute"),
            openai_fallback_base_url=e.url("OPENAI_FALLBACK_BASE_URL"),
            openai_fallback_api_key=e.text("OPENAI_FALLBACK_API_KEY"),
            fallback_model=e.text("AXRISI_FALLBACK_MODEL"),
            trusted_proxies=e.proxies("AXRISI_TRUSTED_PROXIES"),
            greenlet_gauge=e.integer("AXRISI_GREENLET_GAUGE", 0, low=0, high=1) == 1,
            local_model=e.local_model("AXRISI_LOCAL_MODEL"),
            local_summary=e.choice("AXRISI_LOCAL_SUMMARY", ("extractive", "model"),
                                   "extractive"),
            local_model_input_tokens=e.integer("AXRISI_LOCAL_MODEL_INPUT_TOKENS", 1024,
                                               low=256, high=131_072),
            local_model_output_tokens=e.integer("AXRISI_LOCAL_MODEL_OUTPUT_TOKENS", 512,
                                                low=16, high=131_072),
            local_model_slots=e.integer("AXRISI_LOCAL_MODEL_SLOTS", 2, low=1, high=64),
            local_model_threads=e.integer("AXRISI_LOCAL_MODEL_THREADS", 0, low=0, high=512),
            local_model_temperature=e.number("AXRISI_LOCAL_MODEL_TEMPERATURE", 0.2, low=0.0,
                                             high=2.0, what="a number"),
            local_model_seed=e.optional_integer("AXRISI_LOCAL_MODEL_SEED", low=0,
                                                high=2**32 - 2),
            model_server_url=e.url("AXRISI_MODEL_SERVER_URL"),
            model_server_key=e.text("AXRISI_MODEL_SERVER_KEY"),
        )
        _check_jwt(settings)
        _check_scaling(settings)
        _check_redis_tls(settings)
        _check_redis_cluster(settings)
        _check_local_model(settings)
        return settings


def _is_tls(redis_url: str | None) -> bool:
    return bool(redis_url) and str(redis_url).lower().startswith("rediss://")


def default_max_streams(workers: int) -> int:
    """Size the per-worker stream cap to half the machine's memory, shared among the workers."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1000
    per_worker = pages * page_size // 2 // max(1, workers)
    return max(DEFAULT_MAX_STREAMS_FLOOR, min(50_000, per_worker // BYTES_PER_STREAM_BUDGET))


def _check_scaling(s: Settings) -> None:
    """Several workers without Redis would multiply every per-user limit by the worker count."""
    if s.web_concurrency > 1 and not s.redis_url:
        raise ConfigError(
            f"WEB_CONCURRENCY is {s.web_concurrency} but REDIS_URL is not set: per-user limits "
            "would be counted per worker; set REDIS_URL so that the workers share them "
            "(or use WEB_CONCURRENCY=1)."
        )


def _check_redis_tls(s: Settings) -> None:
    """A CA file with verification off would be ignored: one of them is a mistake."""
    if s.redis_ca_file and not s.redis_tls_verify:
        raise ConfigError("Set AXRISI_REDIS_CA_FILE or AXRISI_REDIS_TLS_VERIFY=0, not both: with "
                          "verification off the CA certificates would not be used.")


def _check_redis_cluster(s: Settings) -> None:
    """A cluster is reached over TCP, through REDIS_URL's node."""
    if s.redis_cluster and not (s.redis_url or "").startswith(("redis://", "rediss://")):
        raise ConfigError("AXRISI_REDIS_CLUSTER=1 needs REDIS_URL naming a node of the cluster "
                          "(redis:// or rediss://).")


def _check_local_model(s: Settings) -> None:
    """The model settings only mean something with a model named."""
    if s.local_summary == "model" and not s.local_model:
        raise ConfigError("AXRISI_LOCAL_SUMMARY=model needs a model: set AXRISI_LOCAL_MODEL "
                          "(smollm2, a .gguf file, or owner/repo/file.gguf).")


def _check_jwt(s: Settings) -> None:
    """Refuse key set-ups that would let strangers in or lock everybody out."""
    if s.jwt_jwks_url:
        if s.jwt_public_key:
            raise ConfigError("Set JWT_JWKS_URL or JWT_PUBLIC_KEY, not both.")
        return
    if s.jwt_public_key:
        if not s.jwt_algorithm or s.jwt_algorithm.startswith("HS"):
            raise ConfigError(
                "JWT_ALGORITHM must name an asymmetric algorithm (RS256, ES256, ...) "
                "when JWT_PUBLIC_KEY is set."
            )
        return
    if s.jwt_algorithm and not s.jwt_algorithm.startswith("HS"):
        raise ConfigError(f"JWT_PUBLIC_KEY is required when JWT_ALGORITHM is {s.jwt_algorithm}.")
    if s.jwt_secret_key is None:
        if not s.development:
            raise ConfigError(
                "JWT_SECRET_KEY is required outside development mode "
                "(or set AXRISI_ENV=development to try the service with a made-up secret)."
            )
    elif len(s.jwt_secret_key.encode()) < MIN_SECRET_BYTES and not s.development:
        raise ConfigError(f"JWT_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes long.")


_RATE_ITEM = re.compile(
    r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?\s*$", re.I
)
_QUOTA = re.compile(r"^\s*(\d+)\s*/\s*(\d+\s*)?(second|minute|hour|day|month|year)s?\s*$", re.I)


class _Env:
    """Typed reads of environment variables; each failure is one sentence naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str) -> str | None:
        value = self.environ.get(name, "").strip()
        return value or None

    @overload
    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str: ...
    @overload
    def choice(self, name: str, allowed: tuple[str, ...], default: None) -> str | None: ...

    def choice(self, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
        """One of ``allowed`` (matched without case), or ``default`` when unset: never None
        when the default is a string (the overloads say so)."""
        value = self.text(name)
        if value is None:
            return default
        for option in allowed:
            if value.lower() == option.lower():
                return option
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {value!r}.")

    def integer(self, name: str, default: int, low: int | None = None,
                high: int | None = None) -> int:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, not {value!r}.") from None
        return int(self._in_range(name, number, low, high))

    def flag(self, name: str, default: bool) -> bool:
        """1 or 0 (true or false, yes or no, on or off), or ``default`` when unset."""
        value = self.text(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be 1 or 0, not {value!r}.")

    def pem_file(self, name: str, what: str) -> str | None:
        """The path of a readable PEM file holding ``what`` (at least one certificate)."""
        path = self.text(name)
        if path is None:
            return None
        try:
            with open(path, "rb") as file:
                pem = file.read(1024 * 1024)
        except OSError as error:
            raise ConfigError(f"{name} must be a readable file of {what}, and {path!r} is not "
                              f"({error.strerror or error}).") from None
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise ConfigError(f"{name} must be a PEM file of {what}, and {path!r} holds no "
                              "-----BEGIN CERTIFICATE----- block.")
        return path

    def optional_integer(self, name: str, low: int | None = None,
                         high: int | None = None) -> int | None:
        """A whole number, or None when unset."""
        return None if self.text(name) is None else self.integer(name, 0, low, high)

    def number(self, name: str, default: float, low: float | None = None,
               high: float | None = None, what: str = "a number of seconds") -> float:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be {what}, not {value!r}.") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"{name} must be a finite number, not {value!r}.")
        return self._in_range(name, number, low, high)

    @staticmethod
    def _in_range(name: str, number: float, low: float | None, high: float | None) -> float:
        if low is not None and number < low:
            raise ConfigError(f"{name} must be at least {low:g}, not {number:g}.")
        if high is not None and number > high:
            raise ConfigError(f"{name} must be at most {high:g}, not {number:g}.")
        return number

    def algorithms(self, name: str) -> str:
        """A comma-separated list of asymmetric algorithms (RS256 when unset), normalized."""
        value = self.text(name) or "RS256"
        chosen = []
        for part in value.split(","):
            match = next((a for a in ASYMMETRIC if a.lower() == part.strip().lower()), None)
            if match is None:
                raise ConfigError(f"{name} must list asymmetric algorithms "
                                  f"({', '.join(ASYMMETRIC)}) when JWT_JWKS_URL is set, "
                                  f"not {value!r}.")
            chosen.append(match)
        return ",".join(dict.fromkeys(chosen))

    def proxies(self, name: str) -> int | Literal["private"]:
        """``private`` (the default) or a number of proxy hops from 0 to 10."""
        value = self.text(name)
        if value is None or value.lower() == "private":
            return "private"
        if not (value.isascii() and value.isdigit()) or int(value) > 10:
            raise ConfigError(f"{name} must be private or a number of proxy hops from 0 to 10, "
                              f"not {value!r}.")
        return int(value)

    def url(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ConfigError(f"{name} must be an http:// or https:// URL.")
        return value

    def local_model(self, name: str) -> str | None:
        """``smollm2``, a path to a ``.gguf`` file, or a Hugging Face file ``owner/repo/file.gguf``.

        Only the shape is checked here (this runs in every process); whether the file or the
        packages are there is checked once, by the master that starts the model server.
        """
        value = self.text(name)
        if value is None or value.lower() == "smollm2":
            return None if value is None else "smollm2"
        if not value.lower().endswith(".gguf"):
            raise ConfigError(f"{name} must be smollm2, a .gguf file, or a Hugging Face file "
                              f"like owner/repo/file.gguf, not {value!r}.")
        return value

    def redis_url(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and not re.match(r"^(rediss?|unix)://", value):
            raise ConfigError(f"{name} must be a redis://, rediss:// or unix:// URL.")
        return value

    def rate_limit(self, name: str, default: str) -> str:
        value = self.text(name) or default
        # flask-limiter's notation: limits separated by ',', ';' or '|', none of them empty.
        # (Parsed with the `limits` package itself in the worker; it cannot be imported here.)
        items = re.split(r"[;,|]", value)
        if not all(_RATE_ITEM.match(item) for item in items):
            raise ConfigError(
                f"{name} must be limits like '30/minute;1000/day', not {value!r}."
            )
        return value

    def token_quota(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and not _QUOTA.match(value):
            raise ConfigError(f"{name} must be a token count per period like '200000/day'.")
        return value

    def origins(self, name: str) -> tuple[str, ...]:
        value = self.text(name)
        if value is None:
            return ()
        origins = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
        for origin in origins:
            if origin != "*" and not re.match(r"^[a-z][a-z0-9+.-]*://[^/\s]+$", origin):
                raise ConfigError(f"{name} has an origin that is not scheme://host: {origin!r}.")
        return origins
