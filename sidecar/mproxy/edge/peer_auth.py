"""What edge replicas sign for each other, with no I/O: grants requests and answers, forward headers.

Every key is derived from one shared secret (the edge's auth secret or `peers.secretFile`) with a label per
use, so a MAC made for one purpose is never accepted for another, and none of them is the token key itself.

- A grants request carries `X-Mproxy-Peer: <edge id> <unix ms> <hex mac>`; the answer carries
  `X-Mproxy-Peer-Sig: <hex mac>` over the request's timestamp and the body, so an old answer cannot be
  replayed to a newer request.
- A forwarded client starts with a PROXY v2 header whose TLV FORWARD_TLV carries, MACed together with the
  header's addresses: the time, the listener kind, the public port, the name and the sending edge's id;
  version 2 of the TLV also the listener's group and whether a refused TLS client gets an alert (sent
  only when the listener has a group or `tlsRefusal: close`, so an edge that reads version 1 only still
  takes every other client). Nobody without the secret can claim a client address on the forward port.

Timestamps outside `skew` seconds are refused (replay-bounded), and `ReplayGuard` refuses a forward MAC
it has already seen within the window. Every comparison is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass

from mproxy.config.common import LISTENER_GROUP

__all__ = [
    "FORWARD_TLV",
    "KINDS",
    "ForwardClaim",
    "PeerAuthError",
    "PeerKeys",
    "ReplayGuard",
]

FORWARD_TLV = 0xE0  # PP2_TYPE_MIN_CUSTOM: the first type the PROXY spec leaves to applications
TLV_VERSION = 1  # kind, port, name, sender
TLV_VERSION_SCOPED = 2  # and a flags byte (FLAG_TLS_CLOSE) and the listener's group
FLAG_TLS_CLOSE = 0x01
KINDS = ("tls", "http", "tcp")  # listener kinds a client can be forwarded from (not udp)
MAC_BYTES = 32
REQUEST_HEADER = "X-Mproxy-Peer"
SIGNATURE_HEADER = "X-Mproxy-Peer-Sig"


class PeerAuthError(Exception):
    """A peer's signature or claim does not hold; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ForwardClaim:
    """What the forwarding edge vouches for, besides the client address in the PROXY header."""

    kind: str  # tls | http | tcp: how the receiving edge tells a refused client
    serviceport: int  # the public port the client connected to
    name: str  # SNI or Host ("" for tcp)
    sender: str  # the forwarding edge's id (for logs)
    timestamp_ms: int
    group: str | None = None  # the group of the listener the client came to: only its tunnels take it
    tls_alert: bool = True  # that listener's tlsRefusal is alert (False: close)


def _derive(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, b"mproxy peer key v1\n" + label, hashlib.sha256).digest()


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"\n".join(parts), hashlib.sha256).digest()


def _fresh(timestamp_ms: int, now: float, skew: float) -> bool:
    return abs(timestamp_ms / 1000.0 - now) <= skew


class PeerKeys:
    def __init__(self, secret: bytes, *, skew: float = 10.0) -> None:
        self._grants = _derive(secret, b"grants")
        self._forward = _derive(secret, b"forward")
        self.skew = skew

    # -- grants exchange ---------------------------------------------------------------------------

    def sign_request(self, edge_id: str, now: float) -> str:
        ts = str(int(now * 1000))
        mac = _mac(self._grants, b"request", edge_id.encode(), ts.encode()).hex()
        return f"{edge_id} {ts} {mac}"

    def verify_request(self, header: str | None, now: float) -> tuple[str, str]:
        """(caller's edge id, its timestamp) from a request header; raises PeerAuthError."""
        parts = (header or "").split(" ")
        if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 15:
            raise PeerAuthError("bad_auth", f"{REQUEST_HEADER} must be '<edge id> <unix ms> <hex mac>'")
        edge_id, ts, mac = parts
        want = _mac(self._grants, b"request", edge_id.encode(), ts.encode()).hex()
        if not hmac.compare_digest(want, mac):
            raise PeerAuthError("bad_auth", "the peer signature does not match (is peers.secretFile the same "
                                "on every edge?)")
        if not _fresh(int(ts), now, self.skew):
            raise PeerAuthError("stale", f"the request time is over {self.skew:g} s from this edge's clock")
        return edge_id, ts

    def sign_answer(self, request_ts: str, body: bytes) -> str:
        return _mac(self._grants, b"answer", request_ts.encode(), body).hex()

    def verify_answer(self, request_ts: str, body: bytes, signature: str | None) -> None:
        if not hmac.compare_digest(self.sign_answer(request_ts, body), signature or ""):
            raise PeerAuthError("bad_auth", "the peer's answer is not signed with the shared secret")

    # -- forwarded clients -------------------------------------------------------------------------

    def _forward_mac(self, source: tuple[str, int], destination: tuple[str, int], fields: bytes) -> bytes:
        where = f"{source[0]} {source[1]} {destination[0]} {destination[1]}".encode()
        return _mac(self._forward, b"forward", where, fields)

    def forward_tlv(self, source: tuple[str, int], destination: tuple[str, int],
                    claim: ForwardClaim) -> bytes:
        name, sender = claim.name.encode("ascii"), claim.sender.encode("ascii")
        group = (claim.group or "").encode("ascii")
        if len(name) > 255 or len(sender) > 255:
            raise ValueError("name or edge id over 255 bytes")
        scoped = claim.group is not None or not claim.tls_alert
        fields = struct.pack("!BQBH", TLV_VERSION_SCOPED if scoped else TLV_VERSION, claim.timestamp_ms,
                             KINDS.index(claim.kind) + 1, claim.serviceport)
        if scoped:
            fields += bytes([0 if claim.tls_alert else FLAG_TLS_CLOSE, len(group)]) + group
        fields += bytes([len(name)]) + name + bytes([len(sender)]) + sender
        return fields + self._forward_mac(source, destination, fields)

    def verify_forward(self, source: tuple[str, int], destination: tuple[str, int], value: bytes,
                       now: float) -> ForwardClaim:
        """The claim in a FORWARD_TLV value, checked against the header's addresses; raises PeerAuthError."""
        if len(value) < 14 + MAC_BYTES:
            raise PeerAuthError("bad_header", "the forward TLV is too short")
        fields, mac = value[:-MAC_BYTES], value[-MAC_BYTES:]
        if not hmac.compare_digest(self._forward_mac(source, destination, fields), mac):
            raise PeerAuthError("bad_auth", "the forward header's HMAC does not match its addresses")
        version, ts, kind, port = struct.unpack_from("!BQBH", fields)
        pos = 12
        if version not in (TLV_VERSION, TLV_VERSION_SCOPED) or not 1 <= kind <= len(KINDS):
            raise PeerAuthError("bad_header", f"forward TLV version {version} or kind {kind} unknown")
        flags, group = 0, b""
        if version == TLV_VERSION_SCOPED:
            if pos + 2 > len(fields):
                raise PeerAuthError("bad_header", "the forward TLV's fields do not add up to its length")
            flags, group_len = fields[pos], fields[pos + 1]
            group = fields[pos + 2 : pos + 2 + group_len]
            pos += 2 + group_len
        if pos >= len(fields):
            raise PeerAuthError("bad_header", "the forward TLV's fields do not add up to its length")
        name_len = fields[pos]
        name = fields[pos + 1 : pos + 1 + name_len]
        pos += 1 + name_len
        if pos >= len(fields):
            raise PeerAuthError("bad_header", "the forward TLV's fields do not add up to its length")
        sender_len = fields[pos]
        sender = fields[pos + 1 : pos + 1 + sender_len]
        if pos + 1 + sender_len != len(fields):
            raise PeerAuthError("bad_header", "the forward TLV's fields do not add up to its length")
        if not _fresh(ts, now, self.skew):
            raise PeerAuthError("stale", f"the forward header's time is over {self.skew:g} s from this "
                                "edge's clock (replayed, or the clocks disagree)")
        try:
            group_name = group.decode("ascii") or None
            claim = ForwardClaim(KINDS[kind - 1], port, name.decode("ascii"), sender.decode("ascii"), ts,
                                 group_name, not flags & FLAG_TLS_CLOSE)
        except UnicodeDecodeError:
            raise PeerAuthError("bad_header", "the forward TLV's name is not ASCII") from None
        if group_name is not None and not LISTENER_GROUP.fullmatch(group_name):
            raise PeerAuthError("bad_header", "the forward TLV's listener group is not a group name")
        return claim


class ReplayGuard:
    """Forward MACs seen within the clock window; one seen again is a replay. Bounded in count: past
    `max_entries` the oldest are dropped (they are also the first to leave the window)."""

    def __init__(self, window: float, max_entries: int = 100_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def check(self, mac: bytes, now: float) -> None:
        seen = self._seen
        while seen:
            oldest, at = next(iter(seen.items()))
            if at >= now - 2 * self.window and len(seen) < self.max_entries:
                break
            del seen[oldest]
        if mac in seen:
            raise PeerAuthError("replay", "this forward header was already used")
        seen[mac] = now

    def __len__(self) -> int:
        return len(self._seen)
