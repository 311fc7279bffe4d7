"""The real service as a subprocess: gunicorn with gevent workers, as a deploy would run it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
TEST_SECRET = "test-secret-0123456789-0123456789-abcdef"
TEST_AUDIENCE = "axrisi-tests"
TEST_ISSUER = "https://issuer.axrisi.test"


def require_binary(name: str, *also: str, package: str | None = None) -> str:
    """A binary the test needs: a skip on a laptop without it, a failure under CI=true (where
    .ci/run installs it, so its absence is a broken CI, never a silent skip)."""
    import pytest

    path = shutil.which(name) or next((p for p in also if os.access(p, os.X_OK)), None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing under CI=true: .ci/run must install "
                        f"{package or name}")
        pytest.skip(f"{name} is not installed")
    return path


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """``gunicorn -c gunicorn.conf.py app:app`` with a given environment, on a free port."""

    def __init__(self, env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.port = free_port()
        self.runtime_dir = tempfile.mkdtemp(prefix="axrisi-gunicorn-")
        self.log_path = Path(self.runtime_dir) / "server.log"
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": self.runtime_dir,
            "XDG_RUNTIME_DIR": self.runtime_dir,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "JWT_SECRET_KEY": TEST_SECRET,
            "JWT_AUDIENCE": TEST_AUDIENCE,
            "JWT_ISSUER": TEST_ISSUER,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.env = {k: v for k, v in self.env.items() if v is not None}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Gunicorn:
        log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()  # a server that never became ready must not outlive its test
                raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
