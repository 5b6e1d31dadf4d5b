"""What an idle stream costs in the multiplexer: a few hundred bytes, no output queue while nothing waits.

10,000 idle streams per tunnel are the benchmark's case (docs/benchmarks/peers.md, idle KiB/stream); an
empty deque is 624 bytes, as much as the rest of the stream, so one is held only while data is queued."""

from __future__ import annotations

import gc
import tracemalloc

from mproxy.codec import Address
from mproxy.tunnel import Multiplexer, MuxLimits, StreamHandler

N = 1000


async def test_an_idle_stream_that_has_sent_holds_under_500_bytes() -> None:
    mux = Multiplexer(limits=MuxLimits(max_streams=N + 1, max_streams_per_client=N + 1), clock=lambda: 0.0)
    addrs = [Address("IPv4", "10.0.0.1", str(1024 + i)) for i in range(N)]
    handler = StreamHandler()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for addr in addrs:
            stream = mux.open_stream(addr, handler, service="tcp", serviceport=80)
            stream.write(b"hello")  # proven end to end, as the benchmark's idle streams are
            while mux.has_pending_output():
                mux.next_batch()
        gc.collect()
        per_stream = (tracemalloc.get_traced_memory()[0] - before) / N
    finally:
        tracemalloc.stop()
    assert len(mux.streams) == N
    assert all(s.buffered == 0 for s in mux.streams.values())
    assert per_stream < 500, f"{per_stream:.0f} B per idle stream"
