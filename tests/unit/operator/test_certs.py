"""The webhook certificate: a CA and a leaf that a real TLS handshake accepts for the given names."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from mproxy_operator.certs import CertBundle, covers, expires_within, make_bundle


def _handshake(tmp_path: Path, names: list[str]) -> bytes:
    """Serve TLS with a bundle for `names` on loopback; a client trusting only its CA connects to
    127.0.0.1 and reads what the server sends (the verification error propagates)."""
    bundle = make_bundle(names)
    bundle.write(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.recv(2)
    finally:
        thread.join(5)
        listener.close()


def test_bundle_serves_tls_that_verifies_against_its_ca(tmp_path: Path) -> None:
    assert _handshake(tmp_path, ["mproxy-webhook.mproxy-system.svc", "127.0.0.1"]) == b"ok"
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600


def test_wrong_name_fails_verification(tmp_path: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path, ["only.example.test"])


def test_covers_expiry_and_read_back(tmp_path: Path) -> None:
    bundle = make_bundle(["a.example.test", "10.0.0.1"], days=10)
    assert covers(bundle.cert_pem, ["a.example.test", "10.0.0.1"])
    assert not covers(bundle.cert_pem, ["b.example.test"])
    assert expires_within(bundle.cert_pem, 30) and not expires_within(bundle.cert_pem, 5)
    assert CertBundle.read(bundle.write(tmp_path)) == bundle


def test_no_names_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one host name"):
        make_bundle([])


def test_a_stored_certificate_is_reused_only_when_it_still_fits() -> None:
    import base64

    from mproxy_operator.webhook_certs import _usable

    def stored(bundle: CertBundle) -> dict[str, str]:
        return {
            k: base64.b64encode(v).decode()
            for k, v in (("ca.crt", bundle.ca_pem), ("tls.crt", bundle.cert_pem), ("tls.key", bundle.key_pem))
        }

    hosts = ["mproxy-webhook.mproxy-system.svc"]
    good = make_bundle(hosts)
    assert _usable(stored(good), hosts) == good
    assert _usable(stored(good), ["other.svc"]) is None  # the Service was renamed: make a new one
    assert _usable(stored(make_bundle(hosts, days=5)), hosts) is None  # about to expire
    assert _usable({"tls.crt": "bm90IGEgY2VydA=="}, hosts) is None  # missing keys
    assert _usable({**stored(good), "tls.crt": base64.b64encode(b"junk").decode()}, hosts) is None
