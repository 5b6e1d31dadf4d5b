"""A stream's end is data (origin, code, WebSocket close code, message); its str() is the sentence the logs
have always carried."""

from __future__ import annotations

from mproxy.codec import Address
from mproxy.tunnel import Multiplexer, Stream, StreamEnd, StreamHandler
from mproxy.tunnel.end import CLEAN

A = Address("IPv4", "10.0.0.1", "4000")


class _Ends(StreamHandler):
    def __init__(self) -> None:
        self.ends: list[StreamEnd] = []

    def stream_closed(self, end: StreamEnd) -> None:
        self.ends.append(end)


def test_str_keeps_the_old_sentences() -> None:
    assert str(CLEAN) == "" and CLEAN.clean
    assert str(StreamEnd(origin="local", code="E_IDLE", message="idle")) == "E_IDLE: idle"
    assert str(StreamEnd(origin="peer", code="ECONNRESET", message="reset")) == "peer error ECONNRESET: reset"
    assert str(StreamEnd(origin="tunnel", code="shutdown", close_code=1001, message="shutdown: going away")) \
        == "tunnel closed: shutdown: going away"


async def test_a_tunnel_close_carries_its_reason_and_close_code() -> None:
    mux = Multiplexer(name="t")
    handler = _Ends()
    stream: Stream = mux.open_stream(A, handler, service="tcp", serviceport=22)
    mux.close("peer_closed: the peer closed the WebSocket (1001 )", code="peer_closed", close_code=1001)
    assert stream.closed and len(handler.ends) == 1
    end = handler.ends[0]
    assert (end.origin, end.code, end.close_code) == ("tunnel", "peer_closed", 1001) and not end.clean


async def test_an_abort_is_a_local_end_with_its_code() -> None:
    mux = Multiplexer(name="t")
    handler = _Ends()
    mux.open_stream(A, handler, service="tcp", serviceport=22).abort("client gone", "E_CLIENT")
    assert handler.ends == [StreamEnd(origin="local", code="E_CLIENT", message="client gone")]
