"""A self-signed TLS certificate for the bench's HTTPS upstream on 127.0.0.1.

``make(directory)`` writes ``upstream-cert.pem`` and ``upstream-key.pem`` there (the runner: its
run's log directory, once per run) and returns their paths. The certificate is for IP
``127.0.0.1`` and DNS ``localhost`` (subjectAltName), self-signed, with an ECDSA P-256 key (a
cheap handshake for the harness's core), valid from an hour ago for two days. A client trusts it
by taking the certificate file as its CA file: for the service and the naive baseline,
``SSL_CERT_FILE=<cert>`` in the environment (httpx's default SSL context, which both build
through the openai SDK, loads ``SSL_CERT_FILE`` when it is set); for the runner's own requests
to the upstream, ``ssl.create_default_context(cafile=<cert>)``. Stand-alone::

    python bench/tlscert.py DIR      # prints the two paths
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_NAME = "upstream-cert.pem"
KEY_NAME = "upstream-key.pem"


def make(directory: Path) -> tuple[Path, Path]:
    """Write a fresh self-signed certificate for 127.0.0.1 and its key; (cert, key) paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "axrisi-bench upstream"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "axrisi-bench")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
            x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print("\n".join(str(p) for p in make(Path(sys.argv[1]))))
