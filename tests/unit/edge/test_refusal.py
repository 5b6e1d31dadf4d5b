"""A refused client is told in its own protocol."""

from __future__ import annotations

import pytest

from mproxy.edge.refusal import refusal_bytes


@pytest.mark.parametrize(
    ("reason", "alert"),
    [("no_tunnel", 0x70), ("name_too_long", 0x70), ("no_name", 0x70), ("tunnel_full", 0x28),
     ("rate_limited", 0x28), ("sniff_timeout", 0x28)],
)
def test_tls_refusals_are_fatal_alerts(reason: str, alert: int) -> None:
    assert refusal_bytes("tls", reason, "x") == bytes([0x15, 3, 1, 0, 2, 2, alert])


def test_plain_text_on_a_tls_port_gets_no_tls_bytes() -> None:
    assert refusal_bytes("tls", "not_tls", "x") == b""


@pytest.mark.parametrize(
    ("reason", "status"),
    [("no_tunnel", b"404"), ("tunnel_full", b"503"), ("draining", b"503"), ("rate_limited", b"429"),
     ("too_many_connections", b"429"), ("no_name", b"400"), ("name_too_long", b"400"),
     ("bad_proxy_header", b"400")],
)
def test_http_refusals_are_complete_responses(reason: str, status: bytes) -> None:
    out = refusal_bytes("http", reason, "no tunnel is connected for ünïcode.test")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status)
    assert f"X-Mproxy-Reason: {reason}".encode() in head and b"Connection: close" in head
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert length == len(body) and body.decode().startswith("no tunnel")


def test_raw_tcp_refusals_are_a_close() -> None:
    assert refusal_bytes("tcp", "no_tunnel", "x") == b""



@pytest.mark.parametrize("reason", ["no_tunnel", "no_name", "tunnel_full", "backend_failed", "sniff_timeout"])
def test_a_close_tls_listener_sends_no_tls_bytes(reason: str) -> None:
    assert refusal_bytes("tls", reason, "x", tls_alert=False) == b""
    assert refusal_bytes("http", reason, "x", tls_alert=False).startswith(b"HTTP/1.1 ")  # TLS only
