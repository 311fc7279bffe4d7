"""The client's address behind proxies: believed from X-Forwarded-For only where a proxy on a
loopback or private network wrote it (``AXRISI_TRUSTED_PROXIES=private``, the default)."""

from __future__ import annotations

import pytest
from flask import Flask, request

from axrisi.web.clientaddress import client_address, parse_hop, trust_proxies
from axrisi.web.loginguard import counted_as

CHAINS = [
    # (connection's address, X-Forwarded-For, the client), a row per rule of the contract
    pytest.param("203.0.113.9", "198.51.100.1", "203.0.113.9", id="public-connection-is-client"),
    pytest.param("203.0.113.9", "10.0.0.1", "203.0.113.9", id="public-connection-ignores-header"),
    pytest.param("127.0.0.1", None, "127.0.0.1", id="no-header"),
    pytest.param("127.0.0.1", "", "127.0.0.1", id="empty-header"),
    pytest.param("127.0.0.1", "198.51.100.7", "198.51.100.7", id="nginx-on-loopback"),
    pytest.param("10.1.2.3", "198.51.100.7", "198.51.100.7", id="paas-router-on-10/8"),
    pytest.param("192.168.4.4", "198.51.100.7", "198.51.100.7", id="proxy-on-192.168/16"),
    pytest.param("172.31.255.254", "198.51.100.7", "198.51.100.7", id="proxy-on-172.16/12"),
    pytest.param("172.32.0.1", "198.51.100.7", "172.32.0.1", id="172.32-is-public"),
    pytest.param("172.15.255.255", "198.51.100.7", "172.15.255.255", id="172.15-is-public"),
    pytest.param("127.0.0.1", "6.6.6.6, 10.0.0.1, 198.51.100.7", "198.51.100.7",
                 id="spoofed-leading-hops-ignored"),
    pytest.param("127.0.0.1", "10.9.9.9, 198.51.100.7", "198.51.100.7",
                 id="spoofed-private-hop-ignored"),
    pytest.param("10.0.0.2", "198.51.100.7, 10.1.2.3, 192.168.1.1", "198.51.100.7",
                 id="several-private-proxies"),
    pytest.param("127.0.0.1", "10.0.0.5, 127.0.0.2", "10.0.0.5", id="all-private-first-hop"),
    pytest.param("127.0.0.1", "127.0.0.2", "127.0.0.2", id="loopback-client"),
    pytest.param("::1", "2001:db8::7", "2001:db8::7", id="ipv6-loopback-proxy"),
    pytest.param("fdaa:0:1::3", "2001:db8::7, fdaa::9", "2001:db8::7", id="ipv6-fc00/7-proxies"),
    pytest.param("2001:db8::1", "198.51.100.7", "2001:db8::1", id="ipv6-public-connection"),
    pytest.param("fe80::1", "198.51.100.7", "fe80::1", id="link-local-is-not-private"),
    pytest.param("::ffff:127.0.0.1", "198.51.100.7", "198.51.100.7", id="v4-mapped-connection"),
    pytest.param("127.0.0.1", "::ffff:198.51.100.7", "198.51.100.7", id="v4-mapped-hop"),
    pytest.param("127.0.0.1", "198.51.100.7:4711", "198.51.100.7", id="ipv4-with-port"),
    pytest.param("127.0.0.1", "[2001:db8::7]:4711", "2001:db8::7", id="ipv6-with-port"),
    pytest.param("127.0.0.1", "2001:DB8:0:0::7", "2001:db8::7", id="ipv6-canonical"),
    pytest.param("127.0.0.1", "  198.51.100.7  ,  10.0.0.1 ", "198.51.100.7", id="spaces"),
    pytest.param("127.0.0.1", "garbage", "127.0.0.1", id="garbage-only"),
    pytest.param("127.0.0.1", ",,,", "127.0.0.1", id="empty-hops"),
    pytest.param("127.0.0.1", "unknown, 198.51.100.7", "198.51.100.7", id="garbage-left-of-client"),
    pytest.param("127.0.0.1", "198.51.100.7, <script>", "127.0.0.1", id="garbage-as-last-hop"),
    pytest.param("127.0.0.1", "198.51.100.1, garbage, 10.0.0.5", "10.0.0.5",
                 id="garbage-ends-the-walk"),
    pytest.param("127.0.0.1", "1.2.3.4.5, 10.0.0.5", "10.0.0.5", id="bad-ipv4"),
    pytest.param("127.0.0.1", "010.000.000.001", "127.0.0.1", id="leading-zeros-refused"),
    pytest.param("127.0.0.1", "198.51.100.7\x00", "127.0.0.1", id="nul-byte"),
    pytest.param("", "198.51.100.7", "198.51.100.7", id="unix-socket-peer-is-local"),
    pytest.param("garbage", "198.51.100.7", "garbage", id="unparseable-connection"),
]


@pytest.mark.parametrize(("remote", "forwarded_for", "client"), CHAINS)
def test_client_address(remote: str, forwarded_for: str | None, client: str) -> None:
    """The client is the last hop a proxy of ours appended that is not one of our proxies."""
    assert client_address(remote, forwarded_for) == client


def test_a_long_header_of_private_hops_costs_one_pass() -> None:
    """A header of thousands of hops is walked once; every hop private: the first one."""
    chain = ", ".join(["10.0.0.1"] + ["192.168.0.1"] * 5000)
    assert client_address("127.0.0.1", chain) == "10.0.0.1"


def test_parse_hop_refuses_what_is_not_an_address() -> None:
    """Hostnames, obfuscated tokens and empty hops are not addresses."""
    for text in ("example.com", "_hidden", "", "[]", "[::1", "1.2.3.4:", "unknown", "::ffff:"):
        assert parse_hop(text) is None, text


def app_answering_remote_addr(trusted: int | str) -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def remote() -> str:
        return request.remote_addr or ""

    app.wsgi_app = trust_proxies(app.wsgi_app, trusted)  # type: ignore[method-assign,arg-type]
    return app


@pytest.mark.parametrize(("trusted", "remote", "forwarded_for", "seen"), [
    ("private", "127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7"),
    ("private", "203.0.113.9", "198.51.100.7", "203.0.113.9"),
    (0, "127.0.0.1", "198.51.100.7", "127.0.0.1"),
    (1, "127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7"),
    (2, "127.0.0.1", "6.6.6.6, 198.51.100.7", "6.6.6.6"),
    (1, "203.0.113.9", "198.51.100.7", "198.51.100.7"),  # N hops: believed from anywhere
])
def test_the_setting_decides_what_the_app_sees(trusted: int | str, remote: str,
                                                forwarded_for: str, seen: str) -> None:
    """``private``, a number of hops, or 0, as REMOTE_ADDR in the app (and gunicorn's log)."""
    client = app_answering_remote_addr(trusted).test_client()
    answer = client.get("/", headers={"X-Forwarded-For": forwarded_for},
                        environ_base={"REMOTE_ADDR": remote})
    assert answer.text == seen


def test_ipv6_failures_count_per_64() -> None:
    """One IPv6 subscriber's /64 is one address to the failed-login limit; IPv4 is as it is."""
    assert counted_as("2001:db8:1:2::1") == counted_as("2001:db8:1:2:ffff:1:2:3")
    assert counted_as("2001:db8:1:3::1") != counted_as("2001:db8:1:2::1")
    assert counted_as("198.51.100.7") == "198.51.100.7"
