"""How a refused TLS client is told (Gateway API TLSRouteInvalidBackendRef*): a listener with
`tlsRefusal: close` closes (FIN, no TLS byte), the default sends a fatal alert. Real TLS clients, the edge
in process and a real `mproxy sidecar` process; refusals at the edge (no tunnel for the name) and at the
sidecar (a refused backend share, a backend nobody listens on)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time

import pytest

from mproxy.ca import CertificateAuthority

from .harness import Parts, sidecar_process, status, tls_request, token, tunnel_url

pytestmark = pytest.mark.e2e


def client_hello(name: str) -> bytes:
    """The first flight of a real TLS client for `name` (what the edge sniffs)."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def raw_answer(port: int, name: str) -> bytes:
    """Send a ClientHello, half-close, read to EOF: the bytes the edge answered (a reset raises)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(client_hello(name))
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
        return got


def handshake(port: int, name: str, ca: CertificateAuthority) -> BaseException | None:
    """A real TLS handshake (a blocking client, as Go's crypto/tls in the conformance suite); its error."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            with ca.client_context().wrap_socket(sock, server_hostname=name):
                return None
        except (OSError, ssl.SSLError) as exc:
            return exc


async def test_close_listeners_close_and_alert_listeners_alert(parts: Parts) -> None:
    relay = await parts.edge(listeners=[{"kind": "tls", "listen": "127.0.0.1:0", "tlsRefusal": "close"},
                                        {"kind": "tls", "listen": "127.0.0.1:0"}])
    closing, alerting = (item.port for item in relay.listeners)
    back = await parts.backends(["ok.test", "gone.test", "dead.test"])
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    await sidecar_process(parts, "t", tunnel_url(relay), token(["ok.test", "gone.test", "dead.test"]), [
        {"name": "ok", "match": {"hostnames": ["ok.test"]},
         "backend": {"host": "127.0.0.1", "port": back.https_port}},
        {"name": "gone", "match": {"hostnames": ["gone.test"]}, "backends": [{"weight": 1, "refuse": True}]},
        {"name": "dead", "match": {"hostnames": ["dead.test"]},
         "backend": {"host": "127.0.0.1", "port": dead_port}},
    ])
    deadline = time.monotonic() + 15
    while "ok.test" not in (await status(relay))["names"]:
        assert time.monotonic() < deadline, "the sidecar never connected"
        await asyncio.sleep(0.05)
    for port in (closing, alerting):
        assert await tls_request(port, "ok.test", back.ca) == b"A:ping"  # served either way

    # other.test: no tunnel (the edge refuses); gone.test: the route refuses (E_NO_ROUTE at the
    # sidecar); dead.test: ECONNREFUSED at the sidecar.
    for name in ("other.test", "gone.test", "dead.test"):
        assert await asyncio.to_thread(raw_answer, closing, name) == b"", name  # a FIN, no byte, no reset
        err = await asyncio.to_thread(handshake, closing, name, back.ca)
        assert isinstance(err, ssl.SSLEOFError), (name, err)  # what Go reports as io.EOF
    want = {"other.test": "TLSV1_UNRECOGNIZED_NAME", "gone.test": "TLSV1_ALERT_INTERNAL_ERROR",
            "dead.test": "TLSV1_ALERT_INTERNAL_ERROR"}
    alert = {"other.test": 0x70, "gone.test": 0x50, "dead.test": 0x50}
    for name, reason in want.items():
        fatal = bytes([0x15, 3, 1, 0, 2, 2, alert[name]])  # a fatal alert record
        assert await asyncio.to_thread(raw_answer, alerting, name) == fatal
        err = await asyncio.to_thread(handshake, alerting, name, back.ca)
        assert isinstance(err, ssl.SSLError) and err.reason == reason, (name, err)
    assert await tls_request(closing, "ok.test", back.ca) == b"A:ping"  # the tunnel carried on
