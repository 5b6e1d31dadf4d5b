"""What bounds an interactive frame's wait behind a bulk stream, with the default limits.

A frame waits for (a) the WebSocket message it is packed in, which the peer handles only once whole, and
(b) whatever the tunnel transport still buffers. Both are kept to about one 64 KiB frame; the measured
effect is in docs/benchmarks/dataplane.md ("Performance work")."""

from __future__ import annotations

import asyncio

from mproxy.aiohttp_compat import transport_of
from mproxy.codec import Address, Message, parse_all
from mproxy.tunnel import Multiplexer, MuxLimits, StreamHandler

from .conftest import PairFactory


async def test_default_batches_hold_one_bulk_frame_and_the_interactive_one_waits_at_most_one() -> None:
    mux = Multiplexer(limits=MuxLimits(), clock=lambda: 0.0)
    bulk = mux.open_stream(Address("IPv4", "1.1.1.1", "1"), StreamHandler(), service="tcp")
    chat = mux.open_stream(Address("IPv4", "2.2.2.2", "2"), StreamHandler(), service="tcp")
    bulk.write(b"B" * 4_000_000)
    for _ in range(2):  # each connection frame is a message of its own
        assert len(mux.next_batch()) == 1
    first = mux.next_batch()  # the bulk stream has a whole batch queued before the interactive write
    chat.write(b"ping")
    second, third = mux.next_batch(), mux.next_batch()
    for batch in (first, second, third):
        assert sum(len(b) for b in batch) <= 64 * 1024 + 1024
    # Round robin: the bulk stream's turn (queued first) goes out, then the interactive frame.
    data = [e for e in parse_all(b"".join(second) + b"".join(third)) if isinstance(e, Message)]
    assert [bytes(e.data) for e in data][1] == b"ping"
    assert len(data[0].data) > 60 * 1024


async def test_the_tunnel_transport_buffers_nothing_past_the_scheduler(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair() as pair:
        assert pair.edge_ws is not None
        transport = transport_of(pair.edge_ws)
        assert transport is not None
        assert transport.get_write_buffer_limits() == (0, 0)  # set by run_tunnel's frame_sender
        # ... and the tunnel still carries a bulk transfer whole with that limit.
        stream, rec = pair.open()
        payload = bytes(range(256)) * 4096  # 1 MiB
        stream.write(payload)
        assert await asyncio.wait_for(rec.wait_bytes(len(payload)), 20) == payload
