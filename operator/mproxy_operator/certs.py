"""The webhook's serving certificate: a self-signed CA and a leaf for the Service's DNS names.

kopf's own self-signed path needs oscrypto, which breaks on OpenSSL >= 3.0.10, so the operator makes
its certificates with the project's small CA (`mproxy.ca`, on `cryptography`): ECDSA P-256 keys, fast to
make, accepted by every apiserver.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from mproxy.ca import CertificateAuthority

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"


@dataclass(frozen=True, slots=True)
class CertBundle:
    ca_pem: bytes
    cert_pem: bytes  # the leaf, then the CA
    key_pem: bytes

    def write(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CA_FILE).write_bytes(self.ca_pem)
        (directory / CERT_FILE).write_bytes(self.cert_pem)
        key = directory / KEY_FILE
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.key_pem)
        return directory

    @classmethod
    def read(cls, directory: Path) -> CertBundle:
        cert = (directory / CERT_FILE).read_bytes()
        ca_path = directory / CA_FILE
        return cls(
            ca_path.read_bytes() if ca_path.exists() else cert, cert, (directory / KEY_FILE).read_bytes()
        )


def make_bundle(hostnames: list[str], days: int = 3650) -> CertBundle:
    """A fresh CA and a serving certificate for `hostnames` (DNS names or IP addresses)."""
    if not hostnames:
        raise ValueError("the webhook certificate needs at least one host name")
    ca = CertificateAuthority.create("mproxy-operator webhook CA", days=days)
    leaf = ca.issue(hostnames, days=days)
    return CertBundle(ca_pem=ca.cert_pem, cert_pem=leaf.cert_pem, key_pem=leaf.key_pem)


def expires_within(cert_pem: bytes, days: int) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


def covers(cert_pem: bytes, hostnames: Iterable[str]) -> bool:
    """True when the certificate's SANs include every name (so a stored cert can be reused)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return all(h in have for h in hostnames)
