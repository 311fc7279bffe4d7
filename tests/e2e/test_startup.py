"""Start-up: refusal on bad settings, development mode, the token command, the local provider."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .client import SSEConnection, content_of, make_token
from .servers import ROOT, TEST_SECRET, Gunicorn

DEVELOPMENT = {"AXRISI_ENV": "development", "JWT_SECRET_KEY": None, "JWT_AUDIENCE": None,
               "JWT_ISSUER": None, "AXRISI_LOCAL_PACE_SECONDS": "0"}


@pytest.mark.parametrize(("env", "setting"), [
    ({"JWT_SECRET_KEY": None}, "JWT_SECRET_KEY"),
    ({"JWT_SECRET_KEY": "short"}, "JWT_SECRET_KEY"),
    ({"AXRISI_HEARTBEAT_SECONDS": "soon"}, "AXRISI_HEARTBEAT_SECONDS"),
    ({"PORT": "http"}, "PORT"),
    ({"AXRISI_RATE_LIMIT": "lots"}, "AXRISI_RATE_LIMIT"),
    ({"OPENAI_BASE_URL": "localhost:11434"}, "OPENAI_BASE_URL"),
    ({"WEB_CONCURRENCY": "2"}, "REDIS_URL"),
    ({"AXRISI_REDIS_CA_FILE": "/nonexistent/redis-ca.pem"}, "AXRISI_REDIS_CA_FILE"),
    ({"AXRISI_REDIS_TLS_VERIFY": "maybe"}, "AXRISI_REDIS_TLS_VERIFY"),
])
def test_refuses_to_start_on_a_bad_setting(env: dict, setting: str) -> None:
    """gunicorn exits non-zero with one sentence naming the bad setting."""
    gunicorn = Gunicorn(env)
    gunicorn.start(wait=False)
    assert gunicorn.proc is not None
    code = gunicorn.proc.wait(20)
    assert code != 0
    lines = [line for line in gunicorn.log().splitlines() if line.startswith("axrisi:")]
    assert len(lines) == 1 and setting in lines[0], gunicorn.log()
    assert "Traceback" not in gunicorn.log()


def test_development_mode_prints_a_working_token() -> None:
    """AXRISI_ENV=development starts without a secret and prints a token that works."""
    with Gunicorn(DEVELOPMENT) as gunicorn:
        deadline = time.monotonic() + 10
        while "TOKEN=" not in gunicorn.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        match = re.search(r"TOKEN=(\S+)", gunicorn.log())
        assert match, gunicorn.log()
        body = {"command": "summarize", "text": "Development mode works. It prints a token."}
        conn = SSEConnection(gunicorn.url, body, token=match.group(1))
        events = conn.read_all()
    assert conn.status == 200
    assert events[-1].json["done"] is True and events[-1].json["model"] == "local"
    assert "MonkeyPatchWarning" not in gunicorn.log()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (/proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK, ANY = "0100007F", "00000000"  # 127.0.0.1 and 0.0.0.0 as /proc/net/tcp spells them


@pytest.mark.parametrize(("env", "where"), [
    pytest.param(DEVELOPMENT, {LOOPBACK}, id="development-loopback-only"),
    pytest.param({}, {ANY}, id="production-all-interfaces"),
    pytest.param({**DEVELOPMENT, "GUNICORN_CMD_ARGS": "--bind 0.0.0.0:{port}"}, {ANY},
                 id="development-bound-elsewhere-on-request"),
])
def test_development_mode_listens_on_loopback_only(env: dict, where: set[str]) -> None:
    """Development mode hands tokens to whoever asks: it listens on 127.0.0.1 unless
    GUNICORN_CMD_ARGS binds elsewhere; production listens on every interface."""
    gunicorn = Gunicorn(env)
    if "GUNICORN_CMD_ARGS" in env:
        gunicorn.env["GUNICORN_CMD_ARGS"] = env["GUNICORN_CMD_ARGS"].format(port=gunicorn.port)
    with gunicorn:
        assert listening_addresses(gunicorn.port) == where


def test_token_command_mints_a_token_for_the_secret() -> None:
    """`flask --app app token USER` prints a token that the server accepts for that user."""
    env = {"PATH": "/usr/bin:/bin", "JWT_SECRET_KEY": TEST_SECRET}
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "token", "dora"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    import jwt

    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "dora" and claims["exp"] > time.time()
    with Gunicorn({"JWT_AUDIENCE": None, "JWT_ISSUER": None}) as gunicorn:
        conn = SSEConnection(gunicorn.url, {"command": "summarize", "text": "One. Two."},
                             token=token)
        assert conn.status == 200


def test_local_provider_summarizes(local_server: Gunicorn) -> None:
    """With no key or base URL, the local provider streams an extractive summary and done."""
    text = ("The Rhine is a river in Europe. It flows from the Swiss Alps to the North Sea. "
            "The Rhine is one of the longest rivers in Europe. Many cities lie on the Rhine. "
            "Boats carry goods on the river every day.")
    conn = SSEConnection(local_server.url, {"command": "summarize", "text": text,
                                            "title": "Rhine"})
    events = conn.read_all()
    summary = content_of(events)
    assert events[0].json["title"] == "Summary of Rhine"
    assert summary.startswith("- ")
    for line in summary.strip().splitlines():
        assert line[2:] in text
    assert events[-1].json["done"] is True and events[-1].json["model"] == "local"


def test_local_provider_is_honest_about_what_it_cannot_do(local_server: Gunicorn) -> None:
    """Translate on the local provider is an error event that says what to set, not a fake."""
    events = SSEConnection(local_server.url, {"command": "translate", "language": "German",
                                              "text": "Hello there."},
                           token=make_token()).read_all()
    assert events[-1].event == "error"
    assert "OPENAI_BASE_URL" in events[-1].json["error"]
    assert content_of(events) == ""
