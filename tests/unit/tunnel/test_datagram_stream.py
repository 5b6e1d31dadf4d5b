"""UDP streams: one datagram is one data frame both ways, and a full queue drops instead of growing."""

from __future__ import annotations

from mproxy.codec import Address, Connection, Message, Parser
from mproxy.tunnel import Multiplexer, MuxLimits, StreamHandler
from mproxy.tunnel.datagram import MAX_QUEUED, DatagramStream

ADDR = Address("IPv4", "203.0.113.5", "54321")


def frames(mux: Multiplexer) -> list[object]:
    wire = b""
    while mux.has_pending_output():
        wire += b"".join(bytes(part) for part in mux.next_batch())
    return list(Parser(max_body=1 << 20).feed(wire))


def test_each_datagram_is_its_own_frame_never_merged_or_split() -> None:
    mux = Multiplexer(limits=MuxLimits(batch_size=4096), clock=lambda: 0.0)
    stream = mux.open_stream(ADDR, StreamHandler(), service="udp", serviceport=53)
    assert isinstance(stream, DatagramStream)
    sizes = [1, 7, 1024, 1025, 5000, 65507, 3]  # past batch_size too
    for i, size in enumerate(sizes):
        assert stream.send_datagram(bytes([i]) * size) is None
    events = frames(mux)
    assert isinstance(events[0], Connection) and events[0].service == "udp"
    data = [e for e in events if isinstance(e, Message)]
    assert [len(e.data) for e in data] == sizes
    assert all(e.data == bytes([i]) * size for i, (e, size) in enumerate(zip(data, sizes, strict=True)))
    assert all(e.service == "udp" and e.serviceport == "53" for e in data)


def test_a_full_queue_drops_and_says_why_and_never_pauses_the_producer() -> None:
    mux = Multiplexer(limits=MuxLimits(high_water=256 * 1024), clock=lambda: 0.0)
    paused = []

    class Handler(StreamHandler):
        def pause_writing(self) -> None:
            paused.append(True)

    stream = mux.open_stream(ADDR, Handler(), service="udp", serviceport=53)
    assert isinstance(stream, DatagramStream)
    results = [stream.send_datagram(b"x" * 100) for _ in range(MAX_QUEUED + 50)]
    assert results.count(None) == MAX_QUEUED and results.count("queue_full") == 50
    assert stream.buffered == MAX_QUEUED * 100 and not paused
    # Bytes bound too: big datagrams stop at high_water whatever the count.
    other = mux.open_stream(Address("IPv4", "203.0.113.6", "1"), Handler(), service="udp", serviceport=53)
    assert isinstance(other, DatagramStream)
    big = [other.send_datagram(b"y" * 60000) for _ in range(10)]
    assert big.count(None) == 4 and other.buffered <= 256 * 1024
    assert other.send_datagram(b"") == "empty"


def test_a_byte_stream_is_unchanged() -> None:
    mux = Multiplexer(limits=MuxLimits(), clock=lambda: 0.0)
    stream = mux.open_stream(ADDR, StreamHandler(), service="tcp", serviceport=22)
    assert not isinstance(stream, DatagramStream)
    stream.write(b"ab")
    stream.write(b"cd")
    data = [e for e in frames(mux) if isinstance(e, Message)]
    assert [e.data for e in data] == [b"abcd"]  # byte streams are still coalesced


def test_a_datagram_over_our_frame_size_is_oversize_never_split() -> None:
    mux = Multiplexer(limits=MuxLimits(frame_size=1024), clock=lambda: 0.0)
    stream = mux.open_stream(ADDR, StreamHandler(), service="udp", serviceport=53)
    assert isinstance(stream, DatagramStream)
    assert stream.send_datagram(b"a" * 1024) is None
    assert stream.send_datagram(b"a" * 1025) == "oversize"
    assert [len(e.data) for e in frames(mux) if isinstance(e, Message)] == [1024]
