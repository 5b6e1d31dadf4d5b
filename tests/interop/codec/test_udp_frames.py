"""UDP frames (issue 15) are byte-identical to what the reference proxy-packer packs for service `udp`.

The reference treats `udp` as any other service name; our DatagramStream packs one data frame per
datagram. A whole UDP stream as the multiplexer writes it (connection, datagrams of 1 byte to 65,507,
end; and the sidecar's ECONNREFUSED error) must equal the reference's frames one by one, and parse to the
same events in the reference's parser."""

from __future__ import annotations

from typing import Any

import pytest

from mproxy.codec import Address, Parser, pack_error
from mproxy.tunnel import Multiplexer, MuxLimits, StreamHandler
from mproxy.tunnel.datagram import DatagramStream

pytestmark = pytest.mark.interop

SIZES = [1, 2, 12, 512, 1472, 4096, 65507]


def _stream_bytes(addr: Address, serviceport: int) -> tuple[bytes, list[bytes]]:
    mux = Multiplexer(limits=MuxLimits(), clock=lambda: 0.0)
    stream = mux.open_stream(addr, StreamHandler(), service="udp", serviceport=serviceport)
    assert isinstance(stream, DatagramStream)
    datagrams = [bytes((i * 7 + n) % 256 for n in range(size)) for i, size in enumerate(SIZES)]
    for d in datagrams:
        assert stream.send_datagram(d) is None
    stream.write_eof()
    wire = b""
    while mux.has_pending_output():
        wire += b"".join(bytes(p) for p in mux.next_batch())
    return wire, datagrams


@pytest.mark.parametrize("addr", [Address("IPv4", "203.0.113.7", "40053"), Address("IPv6", "::1", "5353")],
                         ids=["ipv4", "ipv6"])
def test_a_udp_stream_is_byte_identical_to_the_reference(oracle: Any, norm: Any, addr: Address) -> None:
    wire, datagrams = _stream_bytes(addr, 53)
    meta = {"family": addr.family, "address": addr.address, "port": addr.port, "serviceport": 53, "name": ""}
    theirs = oracle.pack("packHeader", {**meta, "service": "udp"}, None, "connection")
    for d in datagrams:
        theirs += oracle.pack("packHeader", {**meta, "service": "udp"}, d, None)
    theirs += oracle.pack("packHeader", dict(meta), None, "end")
    assert wire == theirs
    # And the reference parses our stream, whole and in 1,000-byte chunks, to our events.
    for chunks in ([wire], [wire[i:i + 1000] for i in range(0, len(wire), 1000)]):
        got = oracle.parse(chunks)
        assert got["error"] is None
        mine = [norm(e) for e in Parser(max_body=1 << 20).feed(wire)]
        assert got["events"] == mine
        assert [e["event"] for e in mine] == ["connection"] + ["message"] * len(SIZES) + ["end"]


def test_the_sidecars_econnrefused_error_is_byte_identical(oracle: Any) -> None:
    addr = Address("IPv4", "203.0.113.7", "40053")
    message = "the backend refused the datagram (ICMP port unreachable: nothing listens there)"
    mine = pack_error(addr, message, "ECONNREFUSED", serviceport="53")
    theirs = oracle.pack("packHeader", {"family": "IPv4", "address": "203.0.113.7", "port": "40053",
                                        "serviceport": "53", "name": ""},
                         {"message": message, "code": "ECONNREFUSED"}, "error")
    assert mine == theirs
