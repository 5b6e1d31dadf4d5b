"""Whatever the peer sends, feed() either dispatches it or raises TunnelProtocolError, nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mproxy.codec import Address, pack_connection, pack_data, pack_end, pack_error, pack_pause, pack_resume
from mproxy.tunnel import Multiplexer, MuxLimits, Stream, StreamHandler, TunnelProtocolError

ADDRS = [Address("IPv4", "10.0.0.1", str(p)) for p in (1, 2, 3)]
FRAMES = st.one_of(
    st.builds(lambda a: pack_connection(a, service="tcp", serviceport=1), st.sampled_from(ADDRS)),
    st.builds(lambda a, d: pack_data(a, d, service="tcp"), st.sampled_from(ADDRS), st.binary(max_size=64)),
    st.builds(pack_end, st.sampled_from(ADDRS)),
    st.builds(lambda a: pack_error(a, "boom", "E_X"), st.sampled_from(ADDRS)),
    st.builds(pack_pause, st.sampled_from(ADDRS)),
    st.builds(pack_resume, st.sampled_from(ADDRS)),
    st.binary(max_size=16),  # garbage
)


class Echo(StreamHandler):
    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def data_received(self, data: bytes) -> None:
        self.stream.write(data)

    def eof_received(self) -> None:
        self.stream.write_eof()


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAMES, max_size=30), st.integers(min_value=1, max_value=7))
def test_only_documented_errors(frames: list[bytes], cut: int) -> None:
    mux = Multiplexer(on_stream=Echo, implicit_open=True, clock=lambda: 0.0,
                      limits=MuxLimits(max_streams=2, max_streams_per_client=2, max_frame_bytes=1024))
    wire = b"".join(frames)
    try:
        for i in range(0, len(wire), cut):
            mux.feed(wire[i:i + cut])
            while mux.has_pending_output():
                mux.next_batch()
    except TunnelProtocolError:
        pass
    assert len(mux.streams) <= 2
    mux.close("done")
    assert not mux.streams
