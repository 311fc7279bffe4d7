"""A real redis-server on a free loopback port, that a test can kill and start again."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

import redis

from .servers import free_port, require_binary


def redis_binary() -> str:
    """The redis-server binary; a skip on a laptop without it, a failure under CI=true."""
    return require_binary("redis-server")


class RedisServer:
    """``redis-server`` with no persistence, bound to 127.0.0.1."""

    def __init__(self) -> None:
        self.binary = redis_binary()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="axrisi-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def env(self) -> dict[str, str]:
        """The service's settings for this server, as ``RedisCluster.env`` gives a cluster's:
        a test writes ``**redis.env`` for either kind."""
        return {"REDIS_URL": self.url}

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> RedisServer:
        """Kill it and start it again on the same port and directory, empty (no persistence),
        as after a crash: clients that reconnect to the same address find it again."""
        self.kill()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
