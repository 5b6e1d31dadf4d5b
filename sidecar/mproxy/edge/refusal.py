"""Why a public client is not served, and how it is told in its own protocol.

`Refused(reason, message)`: `reason` is a short metric label (mproxy_edge_clients_rejected_total), the
message is for the client. `refusal_bytes(kind, reason, message)` is what a client of a `kind` listener is
sent before the close: a fatal TLS alert, a complete HTTP response, or nothing for raw TCP; with
`tls_alert=False` (a listener's `tlsRefusal: close`) nothing for TLS either: the Gateway API asks that a
refused TLS connection be rejected, and its conformance suite counts only an EOF or a reset as that.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Forwarding", "Refused", "refusal_bytes"]

# TLS alert records (TLS 1.0 record version, which every client accepts in an alert): fatal, then reason.
_ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x01\x00\x02\x02\x70"
_ALERT_HANDSHAKE_FAILURE = b"\x15\x03\x01\x00\x02\x02\x28"
_ALERT_INTERNAL_ERROR = b"\x15\x03\x01\x00\x02\x02\x50"


class Refused(Exception):
    """A client cannot be served; `reason` is a short metric label, the message is for the client."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def refusal_bytes(kind: str, reason: str, message: str, *, tls_alert: bool = True) -> bytes:
    """What a refused client is told, in its own protocol."""
    if kind == "tls":
        if not tls_alert:
            return b""
        if reason in {"no_tunnel", "name_too_long", "no_name"}:
            return _ALERT_UNRECOGNIZED_NAME
        if reason in {"not_tls"}:
            return b""
        if reason in {"tunnel_failed", "backend_failed"}:
            return _ALERT_INTERNAL_ERROR
        return _ALERT_HANDSHAKE_FAILURE
    if kind == "http":
        status = {
            "no_tunnel": "404 Not Found",  # nothing here serves the name: not an upstream failure
            "tunnel_full": "503 Service Unavailable",
            "tunnel_failed": "502 Bad Gateway",
            "backend_failed": "502 Bad Gateway",
            "draining": "503 Service Unavailable",
            "rate_limited": "429 Too Many Requests",
            "too_many_connections": "429 Too Many Requests",
            "too_many_clients": "503 Service Unavailable",
            "client_id_in_use": "503 Service Unavailable",
        }.get(reason, "400 Bad Request")
        body = (message + "\n").encode("utf-8", "replace")
        head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Mproxy-Reason: {reason}\r\n\r\n")
        return head.encode("ascii") + body
    return b""


class Forwarding(Refused):
    """Raised by the router where no local tunnel takes a client but a peer edge may (mproxy.edge.forward):
    the client hands its socket to `router.forward`. Caught as a plain Refused (a replay's second `open`),
    it is the refusal the client gets when no peer takes it."""

    def __init__(self, refusal: Refused, peers: list[Any]) -> None:
        super().__init__(refusal.reason, str(refusal))
        self.refusal = refusal
        self.peers = peers  # the peers to try, in order (mproxy.edge.peers.Peer)
