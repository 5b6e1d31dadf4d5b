"""Writer scheduling without I/O: fairness, urgent frames first, bounded frames and batches, end ordering."""

from __future__ import annotations

from mproxy.codec import Address, Event, Message, parse_all
from mproxy.tunnel import Backoff, Multiplexer, MuxLimits, StreamHandler


def _mux(**kw: int) -> Multiplexer:
    return Multiplexer(limits=MuxLimits(**kw), clock=lambda: 0.0)


def _frames(batch: list[bytes | memoryview]) -> list[Event]:
    return parse_all(b"".join(batch))


def _skip_connections(mux: Multiplexer, n: int) -> None:
    """The first n batches: one connection frame each (a connection ends its WebSocket message)."""
    for _ in range(n):
        assert [type(e).__name__ for e in _frames(mux.next_batch())] == ["Connection"]


async def test_bulk_stream_cannot_starve_an_interactive_one() -> None:
    mux = _mux(frame_size=16 * 1024, batch_size=64 * 1024)
    bulk = mux.open_stream(Address("IPv4", "1.1.1.1", "1"), StreamHandler(), service="tcp")
    chat = mux.open_stream(Address("IPv4", "2.2.2.2", "2"), StreamHandler(), service="tcp")
    bulk.write(b"B" * 10_000_000)
    chat.write(b"ping")
    _skip_connections(mux, 2)
    batch = mux.next_batch()
    events = _frames(batch)
    data = [e for e in events if isinstance(e, Message)]
    # After the two connection frames: one bounded bulk frame, then the interactive one, in one batch.
    assert [len(e.data) for e in data][:2] == [16 * 1024, 4]
    assert data[1].data == b"ping"
    assert sum(len(b) for b in batch) <= 64 * 1024 + 1024


async def test_round_robin_takes_turns() -> None:
    mux = _mux(frame_size=1000, batch_size=10_000)
    streams = [mux.open_stream(Address("IPv4", "1.1.1.1", str(i)), StreamHandler(), service="tcp")
               for i in range(3)]
    for s in streams:
        s.write(b"x" * 5000)
    _skip_connections(mux, 3)
    mux.next_batch()  # the first turns
    events = [e for e in _frames(mux.next_batch()) if isinstance(e, Message)]
    ports = [e.port for e in events]
    assert ports[:6] == ["0", "1", "2", "0", "1", "2"] or ports[:3] in (["1", "2", "0"], ["2", "0", "1"])
    assert all(len(e.data) <= 1000 for e in events)


async def test_end_comes_after_queued_data_and_urgent_first() -> None:
    mux = _mux()
    s = mux.open_stream(Address("IPv4", "1.1.1.1", "1"), StreamHandler(), service="tcp")
    s.write(b"abc")
    s.write_eof()
    s.write(b"ignored after eof")
    mux.send_control([1, "hello"])
    _skip_connections(mux, 1)
    kinds = [type(e).__name__ for e in _frames(mux.next_batch())]
    assert kinds == ["Control", "Message", "End"]
    assert not mux.has_pending_output()


async def test_memoryview_slicing_keeps_bytes_exact() -> None:
    mux = _mux(frame_size=7, batch_size=1 << 20)
    s = mux.open_stream(Address("IPv4", "1.1.1.1", "1"), StreamHandler(), service="tcp")
    payload = bytes(range(256)) * 3
    s.write(payload[:100])
    s.write(memoryview(payload)[100:])
    _skip_connections(mux, 1)
    got = b"".join(e.data for e in _frames(mux.next_batch()) if isinstance(e, Message))
    assert got == payload


def test_backoff_full_jitter_caps_and_resets() -> None:
    import random

    b = Backoff(0.1, 2.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    assert delays[0] <= 0.1  # a fast first retry
    assert all(0.01 <= d <= 2.0 for d in delays)
    assert max(delays[6:]) > 0.5  # grows toward the cap
    b.reset()
    assert b.next_delay() <= 0.1
    try:
        Backoff(0, 1)
    except ValueError:
        pass
    else:
        raise AssertionError("Backoff(0, 1) accepted")


async def test_a_flood_of_refusable_frames_is_a_protocol_error() -> None:
    from mproxy.codec import pack_data
    from mproxy.tunnel import TunnelProtocolError

    mux = Multiplexer(limits=MuxLimits(max_pending_replies=100), clock=lambda: 0.0)  # accepts nothing
    wire = b"".join(pack_data(Address("IPv4", "9.9.9.9", str(i)), b"x", service="tcp") for i in range(150))
    try:
        mux.feed(wire)
    except TunnelProtocolError as exc:
        assert "flood" in str(exc)
    else:
        raise AssertionError("no TunnelProtocolError")
    assert len(mux._urgent_q) == 100  # bounded
