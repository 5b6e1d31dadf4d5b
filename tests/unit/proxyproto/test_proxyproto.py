"""PROXY protocol v1/v2: encode, decode, round trips and refusals (vectors from haproxy's spec)."""

from __future__ import annotations

import ipaddress

import pytest

from mproxy.proxyproto import (
    NEED_MORE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    decode,
    encode,
    encode_v1,
    encode_v2,
)


def test_v1_tcp4_matches_the_spec_example() -> None:
    wire = encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert wire == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    hdr = decode(wire + b"GET / HTTP/1.1\r\n")
    assert hdr == ProxyHeader(1, ("192.168.0.1", 56324), ("192.168.0.11", 443), len(wire))


def test_v1_maps_families_and_unknown() -> None:
    # The relay reports IPv4 clients on a dual-stack socket as ::ffff:a.b.c.d: unmap it.
    assert encode_v1(("::ffff:203.0.113.5", 1), ("10.0.0.1", 2)) == b"PROXY TCP4 203.0.113.5 10.0.0.1 1 2\r\n"
    assert encode_v1(("2001:db8::1", 1), ("10.0.0.1", 2)) == (
        f"PROXY TCP6 2001:db8::1 {ipaddress.IPv6Address('::ffff:10.0.0.1')} 1 2\r\n".encode()
    )
    assert encode_v1(("not-an-ip", 1), ("10.0.0.1", 2)) == b"PROXY UNKNOWN\r\n"
    hdr = decode(b"PROXY UNKNOWN\r\n")
    assert isinstance(hdr, ProxyHeader) and hdr.source is None and hdr.length == 15


def test_v2_round_trip_ipv4_and_ipv6() -> None:
    for src, dst in ((("203.0.113.5", 51234), ("10.1.2.3", 8443)), (("2001:db8::5", 1), ("2001:db8::6", 2))):
        wire = encode_v2(src, dst)
        assert wire.startswith(V2_SIGNATURE) and wire[12] == 0x21
        hdr = decode(wire + b"payload")
        assert isinstance(hdr, ProxyHeader)
        assert (hdr.version, hdr.source, hdr.destination, hdr.length) == (2, src, dst, len(wire))
    assert len(encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2))) == 28
    assert len(encode_v2(("::1", 1), ("::2", 2))) == 52


def test_v2_tlvs_and_local() -> None:
    body = bytes([1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]) + b"\x02\x00\x03abc"
    wire = V2_SIGNATURE + bytes([0x21, 0x11, 0, len(body)]) + body
    hdr = decode(wire)
    assert isinstance(hdr, ProxyHeader) and hdr.tlvs == ((2, b"abc"),)
    local = decode(V2_SIGNATURE + b"\x20\x00\x00\x00")
    assert isinstance(local, ProxyHeader) and local.source is None and local.length == 16
    # encode_v2 writes TLVs after the addresses, byte for byte what decode reads.
    assert encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), [(2, b"abc")]) == wire
    with pytest.raises(ProxyProtocolError):
        encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2), [(256, b"")])


def test_need_more_for_every_prefix() -> None:
    for wire in (encode_v1(("1.2.3.4", 1), ("5.6.7.8", 2)), encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2))):
        for i in range(len(wire)):
            assert decode(wire[:i]) is NEED_MORE, i
        assert isinstance(decode(wire), ProxyHeader)


@pytest.mark.parametrize(
    "wire",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY " + b"x" * 120,
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),
        V2_SIGNATURE + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x09a",
        b"\r\n\r\nX",
    ],
)
def test_refusals(wire: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        decode(wire)


def test_encode_dispatch() -> None:
    assert encode("none", ("1.2.3.4", 1), ("5.6.7.8", 2)) == b""
    assert encode("v1", ("1.2.3.4", 1), ("5.6.7.8", 2)).startswith(b"PROXY TCP4")
    with pytest.raises(ValueError, match="v3"):
        encode("v3", None, None)
