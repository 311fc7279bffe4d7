"""Unit tests for settings (axrisi/config.py): the contract's defaults and one-sentence errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from axrisi.config import ConfigError, Settings

SECRET = "s" * 32
BASE = {"JWT_SECRET_KEY": SECRET}


def settings(**env: str) -> Settings:
    """Settings from a production environment with a valid secret plus ``env``."""
    return Settings.from_env({**BASE, **env})


def config_error(environ: dict[str, str]) -> str:
    """The message of the ConfigError that ``environ`` raises."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    return str(info.value)


def test_defaults_match_the_contract() -> None:
    """With only a secret set, every setting has the contract's default."""
    s = Settings.from_env(BASE)
    assert s.env == "production"
    assert s.development is False
    assert s.port == 8000
    assert s.web_concurrency == 1
    assert s.rate_limit == "30/minute;1000/day"
    assert s.max_streams_per_user == 3
    assert s.token_quota is None
    assert s.max_text_chars == 50_000
    assert s.heartbeat_seconds == 15
    assert s.send_timeout_seconds == 30
    assert s.upstream_timeout_seconds == 60
    assert s.resume_ttl_seconds == 300
    assert s.resume_grace_seconds == 0
    assert s.model == "gpt-4o-mini"
    assert s.provider == "local"
    assert s.openai_api_key is None and s.openai_base_url is None
    assert s.redis_url is None
    assert s.cors_origins == ()
    assert s.metrics_token is None
    assert s.jwt_secret_key == SECRET
    assert s.jwt_public_key is None


def test_max_streams_default_is_a_positive_int() -> None:
    """AXRISI_MAX_STREAMS defaults to a positive whole number sized from memory."""
    s = Settings.from_env(BASE)
    assert isinstance(s.max_streams, int) and not isinstance(s.max_streams, bool)
    assert s.max_streams > 0


def test_empty_values_mean_unset() -> None:
    """A variable set to an empty or blank string takes its default."""
    s = settings(PORT="", AXRISI_MAX_TEXT_CHARS="  ", AXRISI_MODEL="", AXRISI_RATE_LIMIT="")
    assert (s.port, s.max_text_chars, s.model, s.rate_limit) == (
        8000, 50_000, "gpt-4o-mini", "30/minute;1000/day")


@pytest.mark.parametrize(
    ("env", "provider"),
    [
        ({}, "local"),
        ({"OPENAI_API_KEY": "sk-test"}, "openai"),
        ({"OPENAI_BASE_URL": "http://localhost:11434/v1"}, "openai"),
        ({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "https://api.example.com/v1"},
         "openai"),
        ({"OPENAI_API_KEY": "sk-test", "AXRISI_PROVIDER": "local"}, "local"),
        ({"AXRISI_PROVIDER": "OpenAI", "OPENAI_API_KEY": "sk-test"}, "openai"),
    ],
)
def test_provider_default(env: dict[str, str], provider: str) -> None:
    """The provider is openai with a key or base URL, else local; AXRISI_PROVIDER overrides."""
    assert settings(**env).provider == provider


def test_values_are_parsed() -> None:
    """Valid non-default values are parsed into their types."""
    s = settings(
        PORT="9090", WEB_CONCURRENCY="4", AXRISI_MODEL="llama3", AXRISI_RATE_LIMIT="10 per second",
        AXRISI_MAX_STREAMS_PER_USER="0", AXRISI_TOKEN_QUOTA="200000/day",
        AXRISI_MAX_TEXT_CHARS="1000", AXRISI_HEARTBEAT_SECONDS="0.5",
        AXRISI_SEND_TIMEOUT_SECONDS="2.5", AXRISI_UPSTREAM_TIMEOUT_SECONDS="7",
        AXRISI_RESUME_TTL_SECONDS="60", AXRISI_RESUME_GRACE_SECONDS="1.5",
        AXRISI_MAX_STREAMS="25", REDIS_URL="redis://localhost:6379/0",
    )
    assert (s.port, s.web_concurrency, s.model, s.rate_limit) == (9090, 4, "llama3",
                                                                   "10 per second")
    assert (s.max_streams_per_user, s.token_quota, s.max_text_chars) == (0, "200000/day", 1000)
    assert (s.heartbeat_seconds, s.send_timeout_seconds, s.upstream_timeout_seconds) == (
        0.5, 2.5, 7.0)
    assert (s.resume_ttl_seconds, s.resume_grace_seconds, s.max_streams) == (60, 1.5, 25)
    assert s.redis_url == "redis://localhost:6379/0"


@pytest.mark.parametrize(("value", "transport"),
                         [("", "lean"), ("lean", "lean"), ("urllib3", "urllib3"),
                          ("URLLIB3", "urllib3")])
def test_upstream_transport(value: str, transport: str) -> None:
    """AXRISI_UPSTREAM_TRANSPORT picks the SDK's transport; unset is LeanTransport."""
    assert settings(AXRISI_UPSTREAM_TRANSPORT=value).upstream_transport == transport


INVALID = [
    ("PORT", "abc"),
    ("PORT", "0"),
    ("PORT", "65536"),
    ("PORT", "80.5"),
    ("WEB_CONCURRENCY", "0"),
    ("WEB_CONCURRENCY", "two"),
    ("AXRISI_HEARTBEAT_SECONDS", "-1"),
    ("AXRISI_HEARTBEAT_SECONDS", "nan"),
    ("AXRISI_HEARTBEAT_SECONDS", "abc"),
    ("AXRISI_HEARTBEAT_SECONDS", "inf"),
    ("AXRISI_HEARTBEAT_SECONDS", "0"),
    ("AXRISI_SEND_TIMEOUT_SECONDS", "0"),
    ("AXRISI_UPSTREAM_TIMEOUT_SECONDS", "-5"),
    ("AXRISI_RESUME_GRACE_SECONDS", "-1"),
    ("AXRISI_RESUME_TTL_SECONDS", "0"),
    ("AXRISI_RATE_LIMIT", "lots"),
    ("AXRISI_RATE_LIMIT", "30/minute;many"),
    ("AXRISI_TOKEN_QUOTA", "many"),
    ("AXRISI_TOKEN_QUOTA", "200000"),
    ("AXRISI_PROVIDER", "foo"),
    ("AXRISI_UPSTREAM_TRANSPORT", "httpx"),
    ("AXRISI_ENV", "staging"),
    ("OPENAI_BASE_URL", "ftp://x"),
    ("OPENAI_BASE_URL", "localhost:11434"),
    ("REDIS_URL", "http://x"),
    ("CORS_ORIGINS", "not an origin"),
    ("CORS_ORIGINS", "https://ok.example, https://bad.example/path"),
    ("AXRISI_MAX_TEXT_CHARS", "0"),
    ("AXRISI_MAX_TEXT_CHARS", "-1"),
    ("AXRISI_MAX_STREAMS_PER_USER", "-1"),
    ("AXRISI_MAX_STREAMS", "0"),
    ("JWT_ALGORITHM", "none"),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_value_names_the_variable(name: str, value: str) -> None:
    """An invalid value raises ConfigError with one sentence that names the variable."""
    message = config_error({**BASE, name: value})
    assert name in message
    assert "\n" not in message
    assert message.endswith(".")


def test_production_without_secret_names_it() -> None:
    """Production (the default) without JWT_SECRET_KEY refuses to start, naming it."""
    assert "JWT_SECRET_KEY" in config_error({})
    assert "JWT_SECRET_KEY" in config_error({"AXRISI_ENV": "production"})
    assert "JWT_SECRET_KEY" in config_error({"JWT_SECRET_KEY": "   "})


@pytest.mark.parametrize(
    "secret",
    ["short", "s" * 31, "\u00e9" * 15 + "x"],  # the last one is 16 characters but 31 bytes
)
def test_short_secret_refused_outside_development(secret: str) -> None:
    """A secret under 32 bytes refuses to start in production, naming JWT_SECRET_KEY."""
    message = config_error({"JWT_SECRET_KEY": secret})
    assert "JWT_SECRET_KEY" in message
    assert "32" in message


@pytest.mark.parametrize("secret", ["s" * 32, "\u00e9" * 16, "x" * 64])
def test_secret_of_32_bytes_accepted(secret: str) -> None:
    """A secret of at least 32 bytes (not characters) is accepted in production."""
    assert Settings.from_env({"JWT_SECRET_KEY": secret}).jwt_secret_key == secret


def test_short_secret_accepted_in_development() -> None:
    """In development a short secret is accepted."""
    s = Settings.from_env({"AXRISI_ENV": "development", "JWT_SECRET_KEY": "short"})
    assert s.development is True
    assert s.jwt_secret_key == "short"


def test_development_without_secret_accepted() -> None:
    """In development no secret is needed (the service makes one for the run)."""
    s = Settings.from_env({"AXRISI_ENV": "development"})
    assert s.development is True
    assert s.env == "development"
    assert s.jwt_secret_key is None


@pytest.mark.parametrize("algorithm", [None, "HS256", "HS512"])
def test_public_key_needs_asymmetric_algorithm(algorithm: str | None) -> None:
    """JWT_PUBLIC_KEY with an HS algorithm or none refuses to start, naming JWT_ALGORITHM."""
    environ = {"JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----"}
    if algorithm is not None:
        environ["JWT_ALGORITHM"] = algorithm
    assert "JWT_ALGORITHM" in config_error(environ)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_asymmetric_algorithm_needs_public_key(algorithm: str) -> None:
    """RS256/ES256 without JWT_PUBLIC_KEY refuses to start, naming JWT_PUBLIC_KEY."""
    assert "JWT_PUBLIC_KEY" in config_error({**BASE, "JWT_ALGORITHM": algorithm})


def test_public_key_with_rs256_accepted_without_secret() -> None:
    """JWT_PUBLIC_KEY with RS256 starts in production without a secret."""
    key = "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----"
    s = Settings.from_env({"JWT_PUBLIC_KEY": key, "JWT_ALGORITHM": "rs256"})
    assert s.jwt_algorithm == "RS256"
    assert s.jwt_public_key == key


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://example.com", ("https://example.com",)),
        ("https://example.com/", ("https://example.com",)),
        ("chrome-extension://abcdefghijklmnopabcdefghijklmnop",
         ("chrome-extension://abcdefghijklmnopabcdefghijklmnop",)),
        (" https://a.example/ , chrome-extension://abc,http://localhost:3000,",
         ("https://a.example", "chrome-extension://abc", "http://localhost:3000")),
        ("moz-extension://1234-abcd", ("moz-extension://1234-abcd",)),
        ("*", ("*",)),
    ],
)
def test_cors_origins_parsed(value: str, expected: tuple[str, ...]) -> None:
    """CORS_ORIGINS is split on commas, trimmed, trailing slashes stripped, extensions allowed."""
    assert settings(CORS_ORIGINS=value).cors_origins == expected


def test_first_invalid_setting_wins_over_missing_secret() -> None:
    """An invalid value is reported even when the secret is missing too."""
    assert "PORT" in config_error({"PORT": "abc"})


RATE_LIMITS_LIMITS_ACCEPTS = ["30/minute", "30 per minute", "30/minute;1000/day",
                              "30/minute, 1000/day", "100/2 hours", "5 per 10 seconds"]
RATE_LIMITS_LIMITS_REFUSES = ["lots", "30/fortnight", "minute/30", "30"]


@pytest.mark.parametrize("value", RATE_LIMITS_LIMITS_ACCEPTS)
def test_rate_limit_in_flask_limiter_notation_accepted(value: str) -> None:
    """AXRISI_RATE_LIMIT accepts flask-limiter's notation as given."""
    assert settings(AXRISI_RATE_LIMIT=value).rate_limit == value


@pytest.mark.parametrize("value", RATE_LIMITS_LIMITS_REFUSES)
def test_rate_limit_that_flask_limiter_refuses_is_refused(value: str) -> None:
    """A rate limit flask-limiter cannot parse refuses to start, naming AXRISI_RATE_LIMIT."""
    assert "AXRISI_RATE_LIMIT" in config_error({**BASE, "AXRISI_RATE_LIMIT": value})


def test_rate_limit_with_pipe_separator_accepted() -> None:
    """'30/minute|1000/day' (flask-limiter notation) is accepted."""
    from limits import parse_many

    assert len(parse_many("30/minute|1000/day")) == 2
    assert settings(AXRISI_RATE_LIMIT="30/minute|1000/day").rate_limit == "30/minute|1000/day"


@pytest.mark.parametrize("value", ["30/minute;", "10/second,", "30/minute;;1000/day"])
def test_rate_limit_with_empty_item_refused(value: str) -> None:
    """A rate limit with an empty item (which flask-limiter rejects) refuses to start."""
    from limits import parse_many

    with pytest.raises(ValueError):
        parse_many(value)
    assert "AXRISI_RATE_LIMIT" in config_error({**BASE, "AXRISI_RATE_LIMIT": value})


def test_jwks_url_takes_a_list_of_asymmetric_algorithms() -> None:
    s = Settings.from_env({"JWT_JWKS_URL": "https://idp.example/.well-known/jwks.json",
                           "JWT_ALGORITHM": "rs256, ES256,RS256"})
    assert s.jwt_algorithm == "RS256,ES256"
    assert Settings.from_env({"JWT_JWKS_URL": "https://idp.example/jwks"}).jwt_algorithm \
        == "RS256"
    for bad in ({"JWT_ALGORITHM": "HS256"}, {"JWT_ALGORITHM": "RS256,none"},
                {"JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----"}):
        with pytest.raises(ConfigError):
            Settings.from_env({"JWT_JWKS_URL": "https://idp.example/jwks", **bad})
    with pytest.raises(ConfigError, match="JWT_JWKS_URL"):
        Settings.from_env({"JWT_JWKS_URL": "ftp://idp.example/jwks"})


def test_auth_failure_limit_and_trusted_proxies() -> None:
    s = Settings.from_env({**BASE, "AXRISI_AUTH_FAILURE_LIMIT": "10/minute",
                           "AXRISI_TRUSTED_PROXIES": "2"})
    assert (s.auth_failure_limit, s.trusted_proxies) == ("10/minute", 2)
    for bad in ({"AXRISI_AUTH_FAILURE_LIMIT": "lots"}, {"AXRISI_TRUSTED_PROXIES": "-1"},
                {"AXRISI_TRUSTED_PROXIES": "11"}, {"AXRISI_TRUSTED_PROXIES": "all"},
                {"AXRISI_TRUSTED_PROXIES": "²"}):
        with pytest.raises(ConfigError, match="AXRISI_TRUSTED_PROXIES|AXRISI_AUTH_FAILURE"):
            Settings.from_env({**BASE, **bad})


def test_proxies_on_private_networks_are_trusted_by_default() -> None:
    """Behind nginx or a PaaS router the client's address is believed without a setting."""
    assert Settings.from_env(BASE).trusted_proxies == "private"
    assert Settings.from_env({**BASE, "AXRISI_TRUSTED_PROXIES": "Private"}).trusted_proxies \
        == "private"
    assert Settings.from_env({**BASE, "AXRISI_TRUSTED_PROXIES": "0"}).trusted_proxies == 0


def test_local_model_defaults() -> None:
    """No local model by default; the extractive summary and the model's limits otherwise."""
    s = Settings.from_env(BASE)
    assert s.local_model is None and s.local_summary == "extractive"
    assert (s.local_model_input_tokens, s.local_model_output_tokens) == (1024, 512)
    assert (s.local_model_slots, s.local_model_temperature, s.local_model_seed) == (2, 0.2, None)
    assert s.local_model_threads == 0
    assert s.model_server_url is None and s.model_server_key is None


@pytest.mark.parametrize(("value", "parsed"), [
    ("smollm2", "smollm2"), ("SmolLM2", "smollm2"), (" smollm2 ", "smollm2"),
    ("/models/qwen2.5-1.5b-instruct-q4_k_m.gguf", "/models/qwen2.5-1.5b-instruct-q4_k_m.gguf"),
    ("models/x.GGUF", "models/x.GGUF"),
    ("Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf",
     "Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf"),
])
def test_local_model_names(value: str, parsed: str) -> None:
    """AXRISI_LOCAL_MODEL is smollm2 (any case), a .gguf path, or a Hub file."""
    assert settings(AXRISI_LOCAL_MODEL=value).local_model == parsed


def test_local_model_settings_are_parsed() -> None:
    s = settings(AXRISI_LOCAL_MODEL="smollm2", AXRISI_LOCAL_SUMMARY="Model",
                 AXRISI_LOCAL_MODEL_INPUT_TOKENS="512", AXRISI_LOCAL_MODEL_OUTPUT_TOKENS="64",
                 AXRISI_LOCAL_MODEL_SLOTS="4", AXRISI_LOCAL_MODEL_THREADS="1",
                 AXRISI_LOCAL_MODEL_TEMPERATURE="0",
                 AXRISI_LOCAL_MODEL_SEED="42",
                 AXRISI_MODEL_SERVER_URL="http://127.0.0.1:4321/v1",
                 AXRISI_MODEL_SERVER_KEY="k")
    assert (s.local_summary, s.local_model_input_tokens, s.local_model_output_tokens) == (
        "model", 512, 64)
    assert (s.local_model_slots, s.local_model_temperature, s.local_model_seed) == (4, 0.0, 42)
    assert s.local_model_threads == 1
    assert (s.model_server_url, s.model_server_key) == ("http://127.0.0.1:4321/v1", "k")
    assert s.provider == "local"  # the managed server is not an upstream the operator set


@pytest.mark.parametrize(("name", "value"), [
    ("AXRISI_LOCAL_MODEL", "llama3"),
    ("AXRISI_LOCAL_MODEL", "model.bin"),
    ("AXRISI_LOCAL_SUMMARY", "abstractive"),
    ("AXRISI_LOCAL_MODEL_INPUT_TOKENS", "100"),
    ("AXRISI_LOCAL_MODEL_INPUT_TOKENS", "many"),
    ("AXRISI_LOCAL_MODEL_OUTPUT_TOKENS", "0"),
    ("AXRISI_LOCAL_MODEL_SLOTS", "0"),
    ("AXRISI_LOCAL_MODEL_THREADS", "-1"),
    ("AXRISI_LOCAL_MODEL_TEMPERATURE", "-0.1"),
    ("AXRISI_LOCAL_MODEL_TEMPERATURE", "hot"),
    ("AXRISI_LOCAL_MODEL_SEED", "-1"),
    ("AXRISI_LOCAL_MODEL_SEED", "1.5"),
    ("AXRISI_MODEL_SERVER_URL", "127.0.0.1:4321"),
])
def test_invalid_local_model_setting_names_it(name: str, value: str) -> None:
    message = config_error({**BASE, "AXRISI_LOCAL_MODEL": "smollm2", name: value})
    assert name in message and "\n" not in message and message.endswith(".")


def test_model_summaries_need_a_model() -> None:
    """AXRISI_LOCAL_SUMMARY=model without AXRISI_LOCAL_MODEL refuses to start, naming both."""
    message = config_error({**BASE, "AXRISI_LOCAL_SUMMARY": "model"})
    assert "AXRISI_LOCAL_SUMMARY" in message and "AXRISI_LOCAL_MODEL" in message


# --- Redis over TLS: AXRISI_REDIS_CA_FILE, AXRISI_REDIS_TLS_VERIFY ---------------------------

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
TLS_URL = "rediss://:pw@redis.example:6380/0"


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text(PEM)
    return str(path)


def test_redis_tls_defaults_verify_against_the_system_cas() -> None:
    """Unset: the certificate is verified (its name too) against the system's CAs."""
    s = settings(REDIS_URL=TLS_URL)
    assert (s.redis_ca_file, s.redis_tls_verify, s.redis_tls_unverified) == (None, True, False)
    assert s.redis_tls_options() == {"ssl_cert_reqs": "required", "ssl_check_hostname": True}


def test_redis_ca_file_is_trusted(ca_file: str) -> None:
    s = settings(REDIS_URL=TLS_URL, AXRISI_REDIS_CA_FILE=ca_file)
    assert s.redis_ca_file == ca_file
    assert s.redis_tls_options() == {"ssl_cert_reqs": "required", "ssl_check_hostname": True,
                                     "ssl_ca_certs": ca_file}


@pytest.mark.parametrize("value", ["0", "false", "No", "off"])
def test_redis_tls_verify_off_accepts_any_certificate(value: str) -> None:
    s = settings(REDIS_URL=TLS_URL, AXRISI_REDIS_TLS_VERIFY=value)
    assert s.redis_tls_verify is False and s.redis_tls_unverified is True
    assert s.redis_tls_options() == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}


@pytest.mark.parametrize("value", ["1", "true", "YES", "on", ""])
def test_redis_tls_verify_on(value: str) -> None:
    assert settings(REDIS_URL=TLS_URL, AXRISI_REDIS_TLS_VERIFY=value).redis_tls_verify is True


@pytest.mark.parametrize("url", [None, "redis://:pw@redis.example:6379/0",
                                 "unix:///run/redis.sock"])
def test_redis_tls_settings_apply_to_rediss_urls_only(url: str | None, ca_file: str) -> None:
    """A plain connection takes no ssl_* options (redis-py would refuse them), and nothing
    unverified is said about it."""
    for extra in ({"AXRISI_REDIS_CA_FILE": ca_file}, {"AXRISI_REDIS_TLS_VERIFY": "0"}):
        s = settings(**extra, **({"REDIS_URL": url} if url else {}))
        assert s.redis_tls_options() == {} and s.redis_tls_unverified is False
    s = settings(REDIS_URL="redis://x:6379/0", AXRISI_REDIS_CA_FILE=ca_file)
    assert s.redis_tls_options("REDISS://x:6380/0")["ssl_ca_certs"] == ca_file


def test_redis_ca_file_must_be_a_readable_pem_file(tmp_path: Path) -> None:
    """A missing file, a directory, a file with no certificate: one sentence naming it."""
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a")
    for path in (str(tmp_path / "missing.pem"), str(tmp_path), str(not_pem)):
        message = config_error({**BASE, "REDIS_URL": TLS_URL, "AXRISI_REDIS_CA_FILE": path})
        assert message.startswith("AXRISI_REDIS_CA_FILE ") and path in message
        assert "\n" not in message and message.endswith(".")


@pytest.mark.parametrize("value", ["2", "maybe", "verify"])
def test_redis_tls_verify_must_be_1_or_0(value: str) -> None:
    message = config_error({**BASE, "REDIS_URL": TLS_URL, "AXRISI_REDIS_TLS_VERIFY": value})
    assert message == f"AXRISI_REDIS_TLS_VERIFY must be 1 or 0, not {value!r}."


def test_a_ca_file_with_verification_off_is_refused(ca_file: str) -> None:
    """The CA file would be ignored: one of the two settings is a mistake."""
    message = config_error({**BASE, "REDIS_URL": TLS_URL, "AXRISI_REDIS_CA_FILE": ca_file,
                            "AXRISI_REDIS_TLS_VERIFY": "0"})
    assert "AXRISI_REDIS_CA_FILE" in message and "AXRISI_REDIS_TLS_VERIFY=0" in message
    assert "\n" not in message and message.endswith(".")
