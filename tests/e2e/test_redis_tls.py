"""Managed Redis as PaaS hosts sell it: ``rediss://`` with a password, a provider's own CA.

A real ``redis-server`` listens with TLS only (``--port 0 --tls-port``), with a certificate for
127.0.0.1 signed by a CA this module makes, and ``--requirepass``. The real gunicorn talks to it
with ``AXRISI_REDIS_CA_FILE`` (or ``AXRISI_REDIS_TLS_VERIFY=0``); a wrong password, a plain URL
at the TLS port, an untrusted certificate or a TLS URL at a plain port stop start-up with one
sentence; a Redis that is down does not (axrisi/redischeck.py says how it tells them apart).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fake_upstream import FakeUpstream, Scenario

from .client import SSEConnection, content_of, make_token, post_run
from .redis_server import RedisServer, redis_binary
from .servers import Gunicorn, free_port
from .test_resume import resume
from .test_stream import run_body, unique_key

PASSWORD = f"pw-{secrets.token_hex(12)}"
WRONG_PASSWORD = f"pw-{secrets.token_hex(12)}"
UNVERIFIED = "TLS certificate of Redis is not verified"


@dataclass(frozen=True)
class Certificates:
    """A CA and a server certificate it signed, for 127.0.0.1 (an IP SAN), as PEM files."""

    ca: Path
    server: Path
    key: Path


def make_certificates(directory: Path) -> Certificates:
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("axrisi test CA"))
          .issuer_name(name("axrisi test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(valid[0]).not_valid_after(valid[1])
              .add_extension(x509.SubjectAlternativeName(
                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    made = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    made.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    made.server.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    made.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return made


class TLSRedisServer:
    """``redis-server`` with TLS only and a password, on a free loopback port."""

    def __init__(self, certificates: Certificates) -> None:
        self.binary = redis_binary()
        self.certificates = certificates
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="axrisi-redis-tls-")
        self.log = Path(self.dir) / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, password: str | None = PASSWORD, scheme: str = "rediss", db: int = 0) -> str:
        credentials = f":{password}@" if password else ""
        return f"{scheme}://{credentials}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=PASSWORD,
                           ssl=True, ssl_ca_certs=str(self.certificates.ca), socket_timeout=2)

    def start(self) -> TLSRedisServer:
        c = self.certificates
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                 "--tls-cert-file", str(c.server), "--tls-key-file", str(c.key),
                 "--tls-ca-cert-file", str(c.ca), "--tls-auth-clients", "no",
                 "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
                 "--dir", self.dir],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.no_tls(self.log.read_text(errors="replace"))
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server with TLS did not start:\n{self.log.read_text()}")

    @staticmethod
    def no_tls(log: str) -> None:
        """redis-server exited at once: built without TLS (a skip on a laptop, a failure under
        CI=true), or something else (a failure)."""
        if "tls" not in log.lower():
            raise RuntimeError(f"redis-server with TLS exited:\n{log}")
        if os.environ.get("CI") == "true":
            pytest.fail(f"redis-server cannot serve TLS under CI=true:\n{log}")
        pytest.skip("this redis-server was built without TLS")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture(scope="module")
def tls_redis(certificates: Certificates) -> Iterator[TLSRedisServer]:
    server = TLSRedisServer(certificates)
    try:
        yield server.start()
    finally:
        server.stop()


def env_for(upstream: FakeUpstream, url: str, **extra: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": "k", "REDIS_URL": url,
            "AXRISI_HEARTBEAT_SECONDS": "0.5", **extra}


def usage(server: Gunicorn, user: str) -> dict:
    answer = requests.get(server.url + "/api/usage", timeout=5,
                          headers={"Authorization": f"Bearer {make_token(user)}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def assert_clean(log: str) -> None:
    """Redis answered all along: no fallback, no traceback, no ssl imported before gevent."""
    assert "Redis is unreachable" not in log, log
    assert "does not answer at start" not in log, log
    assert "Traceback" not in log and "MonkeyPatchWarning" not in log, log
    assert PASSWORD not in log


def test_streams_and_shares_through_tls_redis_with_a_ca_file(
        upstream: FakeUpstream, tls_redis: TLSRedisServer, certificates: Certificates) -> None:
    """rediss:// with a password and AXRISI_REDIS_CA_FILE: two instances share the rate limit
    and the token quota (limits' own Redis client: TokenQuota), and a stream that ran on one
    replays on the other (the mirror's writes, the readers)."""
    key = unique_key("tls")
    upstream.add_scenario(key, Scenario(tokens=["a", "b", "c"], usage=(3, 2), delay=0.01))
    env = env_for(upstream, tls_redis.url(), AXRISI_REDIS_CA_FILE=str(certificates.ca),
                  AXRISI_RATE_LIMIT="5/minute", AXRISI_TOKEN_QUOTA="100/day")
    user = f"tls-{uuid.uuid4().hex[:8]}"
    with Gunicorn(env) as first, Gunicorn(env) as second:
        events = SSEConnection(first.url, run_body(key), token=make_token(user)).read_all()
        assert events[-1].json["done"] is True
        assert content_of(events) == "abc"
        # The tokens are charged with the terminal event, which the response waits for.
        seen = usage(second, user)
        log = first.log() + second.log()
        assert seen["rate"][0]["remaining"] == 4, (seen, log)
        assert seen["tokens"]["used"] == 5, (seen, log)
        stream_id = events[0].id.rpartition("-")[0]
        replay = resume(second, stream_id, None, user).read_all()
        assert [e.id for e in replay] == [e.id for e in events], log
        log = first.log() + second.log()
    assert_clean(log)
    assert UNVERIFIED not in log
    assert any(name.startswith(b"LIMITS") for name in tls_redis.client().keys("*"))


def test_an_unverified_certificate_is_accepted_and_said_once(
        upstream: FakeUpstream, tls_redis: TLSRedisServer) -> None:
    """AXRISI_REDIS_TLS_VERIFY=0 and no CA file: the self-signed chain is accepted, the service
    writes to Redis, and the log says once (not once per worker) that nothing is verified."""
    key = unique_key("tls-unverified")
    upstream.add_scenario(key, Scenario(tokens=["x", "y"], usage=(1, 1)))
    db = 3
    tls_redis.client(db).flushdb()
    env = env_for(upstream, tls_redis.url(db=db), AXRISI_REDIS_TLS_VERIFY="0",
                  WEB_CONCURRENCY="2")
    with Gunicorn(env) as server:
        assert post_run(server.url, run_body(key), f"tls-{uuid.uuid4().hex[:8]}").status_code \
            == 200
        log = server.log()
    assert_clean(log)
    warnings = [line for line in log.splitlines() if UNVERIFIED in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], log
    assert tls_redis.client(db).dbsize() > 0


@pytest.fixture(scope="module")
def plain_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.parametrize(("case", "says"), [
    ("wrong-password", "refused the user name or password"),
    ("no-password", "wants a password"),
    ("plain-url-at-tls-port", "use rediss://"),
    ("untrusted-certificate", "is not trusted"),
    ("tls-url-at-plain-port", "answers without TLS"),
])
def test_refuses_to_start_on_a_redis_that_cannot_work(
        case: str, says: str, upstream: FakeUpstream, tls_redis: TLSRedisServer,
        certificates: Certificates, request: pytest.FixtureRequest) -> None:
    """gunicorn exits non-zero with one `axrisi:` sentence naming REDIS_URL and what is wrong,
    no traceback, no password, and no worker ever booted."""
    ca = {"AXRISI_REDIS_CA_FILE": str(certificates.ca)}
    if case == "tls-url-at-plain-port":
        plain: RedisServer = request.getfixturevalue("plain_redis")
        url, extra = f"rediss://127.0.0.1:{plain.port}/0", ca
    else:
        url, extra = {
            "wrong-password": (tls_redis.url(WRONG_PASSWORD), ca),
            "no-password": (tls_redis.url(None), ca),
            "plain-url-at-tls-port": (tls_redis.url(scheme="redis"), {}),
            "untrusted-certificate": (tls_redis.url(), {}),
        }[case]
    gunicorn = Gunicorn(env_for(upstream, url, **extra))
    gunicorn.start(wait=False)
    assert gunicorn.proc is not None
    try:
        code = gunicorn.proc.wait(30)
    finally:
        gunicorn.stop()  # a server that did start must not outlive its test
    log = gunicorn.log()
    assert code != 0, log
    lines = [line for line in log.splitlines() if line.startswith("axrisi:")]
    assert len(lines) == 1, log
    assert "REDIS_URL" in lines[0] and says in lines[0], log
    assert "Traceback" not in log and "Booting worker" not in log, log
    assert PASSWORD not in log and WRONG_PASSWORD not in log, log


@pytest.mark.parametrize("scheme", ["rediss", "redis"])
def test_starts_when_redis_is_down(scheme: str, upstream: FakeUpstream,
                                   certificates: Certificates) -> None:
    """Nothing listens at REDIS_URL: the service starts (the fault model's fallback), says so
    in one warning line, and streams."""
    url = f"{scheme}://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    extra = {"AXRISI_REDIS_CA_FILE": str(certificates.ca)} if scheme == "rediss" else {}
    key = unique_key("tls-down")
    upstream.add_scenario(key, Scenario(tokens=["up"]))
    with Gunicorn(env_for(upstream, url, **extra)) as server:
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
        assert post_run(server.url, run_body(key)).status_code == 200
        log = server.log()
    down = [line for line in log.splitlines() if "does not answer at start" in line]
    assert len(down) == 1 and "WARNING" in down[0], log
    assert not any(line.startswith("axrisi:") for line in log.splitlines()), log
    assert PASSWORD not in log
