"""The client's address, believed from ``X-Forwarded-For`` only where a proxy of ours wrote it.

The failed-login guard counts per client address, and behind nginx or a PaaS router every
connection comes from the proxy: believing no header would put every user behind one address,
so one client's bad tokens would lock all of them out. Believing every header would let a client
name any address it likes. ``AXRISI_TRUSTED_PROXIES`` picks the rule:

- ``private`` (the default, as Rails trusts proxies by default): when the connection comes from a
  loopback or private-network address, the client is the last ``X-Forwarded-For`` hop that is not
  such an address, or the first hop where every hop is one (a Unix socket's peer counts as
  loopback). A proxy appends the address it saw,
  so walking from the right, every private hop is one more proxy of ours and the first public one
  is the client; what lies left of it is the client's own claim and is ignored. A hop that is not
  an address ends the walk at the hop to its right (its writer), never further left. A
  connection from a public address is the client itself: its header is ignored.
- a number N: exactly N hops are believed (werkzeug's ``ProxyFix``), for proxies with public
  addresses or a setup that wants it spelled out; 0 believes none.

The answer replaces ``REMOTE_ADDR`` in the WSGI environ, so Flask's ``request.remote_addr`` and
gunicorn's access log (``%(h)s``, when an operator turns it on) show the same address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from werkzeug.middleware.proxy_fix import ProxyFix

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PRIVATE_NETWORKS = tuple(ipaddress.ip_network(net) for net in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7"))
"""Where a proxy of the deployment's own may connect from: loopback and private networks."""

_WITH_PORT = re.compile(r"^(?:\[([^\]]+)\]|([^:]+)):\d{1,5}$|^\[([^\]]+)\]$")
"""``[v6]:port``, ``v4:port`` or ``[v6]``: the address without its brackets and port."""


def parse_hop(text: str) -> IPAddress | None:
    """One hop of ``X-Forwarded-For`` as an address, or None for anything else.

    Accepts what proxies write: ``1.2.3.4``, ``1.2.3.4:5678`` (Azure adds the port), ``2001:db8::1``
    and ``[2001:db8::1]:5678``; an IPv4-mapped IPv6 address is its IPv4 address.
    """
    text = text.strip()
    with_port = _WITH_PORT.match(text)
    if with_port:
        text = next(group for group in with_port.groups() if group)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_private(address: IPAddress) -> bool:
    """Loopback or a private network: where the deployment's own proxies are."""
    return any(address.version == net.version and address in net for net in PRIVATE_NETWORKS)


def client_address(remote: str, forwarded_for: str | None) -> str:
    """The client's address under the ``private`` rule (the module's docstring).

    ``remote`` is the connection's address; an empty one is a Unix socket's peer (gunicorn bound
    to a socket file that only this machine can reach), as local as loopback.
    """
    if not forwarded_for or not _from_own_network(remote):
        return remote
    client = remote
    for hop in reversed(forwarded_for.split(",")):
        address = parse_hop(hop)
        if address is None:
            break
        client = str(address)
        if not is_private(address):
            break
    return client


def _from_own_network(remote: str) -> bool:
    """Whether the connection comes from where the deployment's own proxies are."""
    if not remote:
        return True
    connection = parse_hop(remote)
    return connection is not None and is_private(connection)


class PrivateProxies:
    """WSGI middleware: ``REMOTE_ADDR`` becomes :func:`client_address` of the request."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded_for:
            environ["REMOTE_ADDR"] = client_address(environ.get("REMOTE_ADDR", ""), forwarded_for)
        return self.app(environ, start_response)


def trust_proxies(app: WSGIApplication, trusted: int | Literal["private"]) -> WSGIApplication:
    """``app`` wrapped to find the client's address as ``AXRISI_TRUSTED_PROXIES`` says."""
    if trusted == "private":
        return PrivateProxies(app)
    if trusted:
        return ProxyFix(app, x_for=trusted)
    return app
