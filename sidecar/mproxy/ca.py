"""A small certificate authority and its leaf certificates (demo, tests, the webhook), and loading a
server certificate into a TLS context.

    ca = CertificateAuthority.create("mproxy demo CA")
    leaf = ca.issue(["app.example.test", "127.0.0.1"])
    paths = leaf.write(tmpdir, "app")          # app.crt (leaf + CA chain), app.key
    ca.write_cert(tmpdir / "ca.crt")           # what clients trust

Keys are ECDSA P-256 (fast to generate, accepted everywhere). Names that parse as IP addresses become
IP SANs, everything else a DNS SAN.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PrivateKey = ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key() -> _PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write_private(path: Path, data: bytes) -> None:
    # Private keys are created 0600 from the start, never world-readable even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class LeafCert:
    cert: x509.Certificate
    key: _PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        """The leaf followed by its chain, as servers should present it."""
        parts = [self.cert, *self.chain]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in parts)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, directory: str | Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` (0600) into `directory`; returns both paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        _write_private(key_path, self.key_pem)
        return cert_path, key_path

    def server_context(self, directory: str | Path, stem: str = "server") -> ssl.SSLContext:
        """An ssl server context presenting this certificate (files are written to `directory`)."""
        cert_path, key_path = self.write(directory, stem)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_path, key_path)
        return ctx


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: _PrivateKey

    @classmethod
    def create(cls, common_name: str = "mproxy CA", *, days: int = 365) -> CertificateAuthority:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write_cert(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert_pem)
        return path

    def issue(self, names: Iterable[str], *, days: int = 90, client: bool = False) -> LeafCert:
        """Issue a leaf certificate for `names` (DNS names or IP addresses; the first is the CN)."""
        names = list(names)
        if not names:
            raise ValueError("a certificate needs at least one name")
        key = _key()
        now = _now()
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_san(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return LeafCert(cert, key, (self.cert,))

    def client_context(self) -> ssl.SSLContext:
        """An ssl client context that trusts only this CA."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.load_verify_locations(cadata=self.cert_pem.decode("ascii"))
        return ctx


def server_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """An ssl server context from PEM files, with an error that names the files on failure."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load TLS certificate {cert_file} with key {key_file}: {exc}") from exc
    return ctx
