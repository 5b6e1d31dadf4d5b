"""PROXY protocol v1 and v2 headers (haproxy's proxy-protocol.txt): encode for backends, decode from
trusted load balancers.

The sidecar prepends `encode(version, source, destination)` to a backend connection so that the backend sees
the real client address carried in the M-PROXY header. The edge uses `decode(data)` on listeners that sit
behind a load balancer. Only TCP over IPv4/IPv6 is produced; decode also accepts UNKNOWN / LOCAL / UNSPEC.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "NEED_MORE",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocolError",
    "decode",
    "encode",
    "encode_v1",
    "encode_v2",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest valid v1 line, CRLF included
NEED_MORE = object()  # decode(): "not enough bytes yet"

Endpoint = tuple[str, int]
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    source: Endpoint | None  # None: UNKNOWN / LOCAL / UNSPEC (use the socket's own addresses)
    destination: Endpoint | None
    length: int  # bytes the header occupies at the start of the stream
    tlvs: tuple[tuple[int, bytes], ...] = ()


def _ip(text: str) -> IPAddr:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        raise ProxyProtocolError(f"not an IP address: {text!r}") from None


def _same_family(src: IPAddr, dst: IPAddr) -> tuple[IPAddr, IPAddr]:
    """Both ends of a PROXY header share a family: unmap ::ffff:a.b.c.d, else map IPv4 into IPv6."""
    if isinstance(src, ipaddress.IPv6Address) and src.ipv4_mapped is not None:
        src = src.ipv4_mapped
    if isinstance(dst, ipaddress.IPv6Address) and dst.ipv4_mapped is not None:
        dst = dst.ipv4_mapped
    if src.version == dst.version:
        return src, dst
    if src.version == 4:
        return ipaddress.IPv6Address(f"::ffff:{src}"), dst
    return src, ipaddress.IPv6Address(f"::ffff:{dst}")


def _pair(source: Endpoint | None, destination: Endpoint | None) -> tuple[IPAddr, int, IPAddr, int] | None:
    if source is None or destination is None:
        return None
    try:
        src, dst = _same_family(_ip(source[0]), _ip(destination[0]))
    except ProxyProtocolError:
        return None  # e.g. a client "address" that is not an IP: say UNKNOWN rather than lie
    for port in (source[1], destination[1]):
        if not 0 <= int(port) <= 65535:
            raise ProxyProtocolError(f"port out of range: {port}")
    return src, int(source[1]), dst, int(destination[1])


def encode_v1(source: Endpoint | None, destination: Endpoint | None) -> bytes:
    pair = _pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, sport, dst, dport = pair
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def encode_v2(source: Endpoint | None, destination: Endpoint | None,
              tlvs: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """`tlvs`: (type, value) pairs after the addresses (0xE0-0xEF are free for custom use)."""
    pair = _pair(source, destination)
    if pair is None:
        return V2_SIGNATURE + b"\x21\x00\x00\x00"  # PROXY command, AF_UNSPEC: use the real endpoints
    src, sport, dst, dport = pair
    fam = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    for kind, value in tlvs:
        if not 0 <= kind <= 255 or len(value) > 65535:
            raise ProxyProtocolError(f"TLV type {kind} or its {len(value)}-byte value out of range")
        body += struct.pack("!BH", kind, len(value)) + value
    if len(body) > 65535:
        raise ProxyProtocolError(f"PROXY v2 header body of {len(body)} bytes is over 65535")
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, fam, len(body)) + body


def encode(version: str, source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """`version` as in the config: "v1", "v2" or "none" (empty header)."""
    if version == "v1":
        return encode_v1(source, destination)
    if version == "v2":
        return encode_v2(source, destination)
    if version == "none":
        return b""
    raise ValueError(f"unknown PROXY protocol version {version!r} (use none, v1 or v2)")


def decode(data: bytes | bytearray | memoryview) -> ProxyHeader | object:
    """Parse a PROXY header at the start of `data`: a ProxyHeader, NEED_MORE, or ProxyProtocolError."""
    buf = bytes(data[: 16 + 65535])
    if buf[:1] == b"\r":
        if len(buf) < 16:
            if V2_SIGNATURE.startswith(buf[:12]) and buf[12:13] in (b"", b"\x20", b"\x21"):
                return NEED_MORE
            raise ProxyProtocolError("not a PROXY protocol header")
        return _decode_v2(buf)
    if buf[:1] == b"P":
        return _decode_v1(buf)
    if not buf:
        return NEED_MORE
    raise ProxyProtocolError("not a PROXY protocol header (expected 'PROXY ' or the v2 signature)")


def _decode_v1(buf: bytes) -> ProxyHeader | object:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) < V1_MAX and b"PROXY "[: len(buf)] == buf[:6]:
            return NEED_MORE
        raise ProxyProtocolError("PROXY v1 line has no CRLF within 107 bytes")
    parts = buf[:end].decode("ascii", "replace").split(" ")
    if parts[0] != "PROXY" or len(parts) < 2:
        raise ProxyProtocolError("PROXY v1 line must start with 'PROXY '")
    if parts[1] == "UNKNOWN":
        return ProxyHeader(1, None, None, end + 2)
    if parts[1] not in ("TCP4", "TCP6") or len(parts) != 6:
        raise ProxyProtocolError(f"PROXY v1: expected TCP4/TCP6 and 4 fields, got {' '.join(parts[1:])!r}")
    want = 4 if parts[1] == "TCP4" else 6
    src, dst = _ip(parts[2]), _ip(parts[3])
    if src.version != want or dst.version != want:
        raise ProxyProtocolError(f"PROXY v1: addresses do not match {parts[1]}")
    ports = []
    for p in parts[4:6]:
        if not p.isdigit() or (len(p) > 1 and p[0] == "0") or int(p) > 65535:
            raise ProxyProtocolError(f"PROXY v1: bad port {p!r}")
        ports.append(int(p))
    return ProxyHeader(1, (str(src), ports[0]), (str(dst), ports[1]), end + 2)


def _decode_v2(buf: bytes) -> ProxyHeader | object:
    if buf[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("bad PROXY v2 signature")
    ver_cmd, fam, length = struct.unpack_from("!BBH", buf, 12)
    if ver_cmd >> 4 != 2 or ver_cmd & 0x0F not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2: bad version/command byte 0x{ver_cmd:02x}")
    total = 16 + length
    if len(buf) < total:
        return NEED_MORE
    body = buf[16:total]
    if ver_cmd & 0x0F == 0 or fam >> 4 == 0:  # LOCAL, or UNSPEC: no addresses
        return ProxyHeader(2, None, None, total)
    if fam == 0x11:
        alen = 12
    elif fam == 0x21:
        alen = 36
    else:
        return ProxyHeader(2, None, None, total)  # UDP / unix: not ours to use, skip it
    if length < alen:
        raise ProxyProtocolError(f"PROXY v2: address block of {length} bytes is too short")
    n = 4 if fam == 0x11 else 16
    src = ipaddress.ip_address(body[:n])
    dst = ipaddress.ip_address(body[n : 2 * n])
    sport, dport = struct.unpack_from("!HH", body, 2 * n)
    tlvs: list[tuple[int, bytes]] = []
    pos = alen
    while pos + 3 <= length:
        t, tl = struct.unpack_from("!BH", body, pos)
        if pos + 3 + tl > length:
            raise ProxyProtocolError("PROXY v2: a TLV runs past the header")
        tlvs.append((t, body[pos + 3 : pos + 3 + tl]))
        pos += 3 + tl
    return ProxyHeader(2, (str(src), sport), (str(dst), dport), total, tuple(tlvs))
