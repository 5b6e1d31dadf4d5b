"""The multiplexer over a real loopback WebSocket: streams, half-close, errors, limits, flow control."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from mproxy.codec.errors import ErrorCode
from mproxy.tunnel import Heartbeat, MuxLimits, TunnelProtocolError

from .conftest import Echo, PairFactory, Recorder


async def until(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Wait for a condition the tunnel reaches asynchronously (no fixed sleep: a loaded machine is slow)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.005)


async def test_echo_and_half_close(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair() as pair:
        stream, rec = pair.open(name="example.com", service="https", serviceport="443")
        stream.write(b"hello ")
        stream.write(bytearray(b"world"))
        assert await rec.wait_bytes(11) == b"hello world"
        side = pair.accepted[0]
        assert side.stream is not None
        got = (side.stream.service, side.stream.serviceport, side.stream.name)
        assert got == ("https", "443", "example.com")
        assert side.stream.client_id == "IPv4,10.0.0.1,50000"
        stream.write_eof()  # the echo handler answers end with end: both sides close cleanly
        await asyncio.wait_for(rec.closed.wait(), 5)
        await asyncio.wait_for(side.closed.wait(), 5)
        assert rec.close_reason is None and side.close_reason is None
        assert not pair.edge.streams and not pair.side.streams


async def test_half_close_keeps_the_other_direction_open(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair(handler=Recorder) as pair:
        stream, rec = pair.open()
        stream.write(b"request")
        stream.write_eof()
        side, far = await pair.far_side()
        await asyncio.wait_for(side.eof.wait(), 5)
        assert bytes(side.data) == b"request"
        assert not far.closed
        far.write(b"response after the client's end")
        far.write_eof()
        assert await rec.wait_bytes(31) == b"response after the client's end"
        await asyncio.wait_for(rec.closed.wait(), 5)
        assert rec.close_reason is None


async def test_error_both_ways(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair(handler=Recorder) as pair:
        stream, rec = pair.open()
        stream.write(b"x")
        _, far = await pair.far_side()
        far.abort("backend refused", ErrorCode.CONNREFUSED)
        await asyncio.wait_for(rec.closed.wait(), 5)
        assert rec.error == ("backend refused", ErrorCode.CONNREFUSED)
        assert rec.close_reason and ErrorCode.CONNREFUSED in rec.close_reason
        # The tunnel carries on: a second stream works.
        s2, _ = pair.open(port=50001)
        s2.write(b"again")
        await until(lambda: len(pair.accepted) > 1 and bytes(pair.accepted[1].data) == b"again",
                    "the second stream's data")


async def test_many_streams_interleave(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair(limits=MuxLimits(max_streams_per_client=1000)) as pair:
        recs = []
        for i in range(200):
            stream, rec = pair.open(port=40000 + i)
            stream.write(bytes([i % 256]) * (1000 + i))
            recs.append(rec)
        for i, rec in enumerate(recs):
            assert await rec.wait_bytes(1000 + i) == bytes([i % 256]) * (1000 + i)


async def test_limits_answer_the_client_not_the_tunnel(tunnel_pair: PairFactory) -> None:
    limits = MuxLimits(max_streams=3, max_streams_per_client=2)
    async with tunnel_pair(limits=limits) as pair:
        # Same address: the third is over the per-client limit.
        opened = [pair.open(port=p) for p in (1, 2, 3)]
        for stream, _ in opened:
            stream.write(b"hi")
        await asyncio.wait_for(opened[2][1].closed.wait(), 5)
        assert opened[2][1].error is not None and opened[2][1].error[1] == ErrorCode.LIMIT
        assert "client address" in opened[2][1].error[0]
        assert len(pair.side.streams) == 2 and pair.side.refused == {ErrorCode.LIMIT: 1}
        assert not opened[0][1].closed.is_set()
        # Another address still fits under the per-tunnel limit of 3, then a fourth stream does not.
        from mproxy.codec import Address
        other = Recorder()
        pair.edge.open_stream(Address("IPv4", "10.9.9.9", "1"), other, service="tcp")
        fourth = Recorder()
        pair.edge.open_stream(Address("IPv4", "10.9.9.8", "1"), fourth, service="tcp")
        await asyncio.wait_for(fourth.closed.wait(), 5)
        assert fourth.error is not None and "this tunnel" in fourth.error[0]
        assert not other.closed.is_set()


async def test_per_client_limits_count_ipv6_per_64_both_ways(tunnel_pair: PairFactory) -> None:
    """One host holds a whole /64: counting each IPv6 address alone let it open max_streams_per_client
    streams from every address (edge can_open and sidecar accept)."""
    from mproxy.codec import Address

    async with tunnel_pair(limits=MuxLimits(max_streams_per_client=2)) as pair:
        same = [Address("IPv6", f"2001:db8:7:1::{i + 1:x}", "1") for i in range(3)]
        recs = [Recorder() for _ in same]
        for addr, rec in zip(same[:2], recs, strict=False):
            pair.edge.open_stream(addr, rec, service="tcp").write(b"hi")
        assert not pair.edge.can_open("2001:db8:7:1:ffff::9")  # before: True, another address
        assert pair.edge.can_open("2001:db8:7:2::1")  # another /64: its own budget
        # The accepting side counts the same way, even when the opener does not check.
        pair.edge.open_stream(same[2], recs[2], service="tcp").write(b"hi")
        await asyncio.wait_for(recs[2].closed.wait(), 5)
        assert recs[2].error is not None and recs[2].error[1] == ErrorCode.LIMIT, recs[2].error
        assert "/64" in recs[2].error[0]
        assert len(pair.side.streams) == 2 and not recs[0].closed.is_set()
        other = Recorder()
        pair.edge.open_stream(Address("IPv6", "2001:db8:7:2::1", "1"), other, service="tcp").write(b"hi")
        await asyncio.sleep(0.1)
        assert not other.closed.is_set() and len(pair.side.streams) == 3
        # A stream that ends frees its /64's slot.
        pair.edge.streams[same[0].client_id].abort("done", ErrorCode.CLIENT)
        await asyncio.wait_for(recs[0].closed.wait(), 5)
        assert pair.edge.can_open("2001:db8:7:1::77")


async def test_draining_refuses_new_streams(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair() as pair:
        s1, r1 = pair.open(port=1)
        s1.write(b"a")
        await r1.wait_bytes(1)
        pair.side.draining = True
        _, r2 = pair.open(port=2)
        await asyncio.wait_for(r2.closed.wait(), 5)
        assert r2.error is not None and r2.error[1] == ErrorCode.SHUTTING_DOWN
        s1.write(b"b")  # the stream in flight still works
        assert await r1.wait_bytes(2) == b"ab"


async def test_pause_from_the_peer_pauses_the_producer(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair(handler=Recorder) as pair:
        stream, rec = pair.open()
        stream.write(b"x")
        _, far = await pair.far_side()
        far.pause_reading()  # the side's sink is full: ask the edge to stop this client
        await until(lambda: rec.pauses == 1 and stream.writing_paused, "the pause to reach the producer")
        far.resume_reading()
        await until(lambda: rec.resumes == 1 and not stream.writing_paused, "the resume to arrive")
        assert pair.edge.pauses_received == 1


async def test_high_water_pauses_the_local_producer(tunnel_pair: PairFactory) -> None:
    limits = MuxLimits(high_water=64 * 1024, low_water=16 * 1024)
    async with tunnel_pair(limits=limits) as pair:
        stream, rec = pair.open()
        stream.write(b"z" * 200_000)  # far past high water, in one call
        assert rec.pauses == 1 and stream.writing_paused
        await rec.wait_bytes(200_000)
        assert rec.resumes == 1 and not stream.writing_paused


async def test_implicit_open_on_data_for_an_unknown_client(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair(implicit_open=True) as pair:
        from mproxy.codec import Address, pack_data
        # An old relay sends data without a connection frame first.
        pair.edge._urgent(pack_data(Address("IPv4", "10.1.1.1", "7"), b"early", service="ssh",
                                    serviceport="22"))
        await asyncio.sleep(0.1)
        assert len(pair.accepted) == 1
        assert pair.accepted[0].stream is not None and pair.accepted[0].stream.service == "ssh"
        assert bytes(pair.accepted[0].data) == b"early"


async def test_data_for_unknown_client_gets_no_conn_without_implicit_open(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair() as pair:
        from mproxy.codec import Address, pack_data
        got: list[tuple[str, str]] = []
        orig = pair.edge._dispatch

        def spy(event: object) -> None:
            code = getattr(event, "code", None)
            if code:
                got.append((event.client_id, code))  # type: ignore[attr-defined]
            orig(event)  # type: ignore[arg-type]

        pair.edge._dispatch = spy  # type: ignore[method-assign]
        pair.edge._urgent(pack_data(Address("IPv4", "10.1.1.1", "7"), b"stray", service="tcp"))
        await asyncio.sleep(0.1)
        assert got == [("IPv4,10.1.1.1,7", ErrorCode.NO_CONN)]
        assert not pair.accepted


async def test_malformed_bytes_close_the_tunnel_with_a_reason(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair() as pair:
        stream, rec = pair.open()
        stream.write(b"ok")
        await rec.wait_bytes(2)
        assert pair.edge_ws is not None
        await pair.edge_ws.send_bytes(b"\xfe\x00garbage")  # header length 0
        assert pair.side_result is not None and pair.edge_result is not None
        side = await asyncio.wait_for(pair.side_result, 5)
        assert side.reason == "protocol_error" and side.code == 1002
        assert "header length 0" in side.detail
        edge = await asyncio.wait_for(pair.edge_result, 5)
        assert edge.reason == "peer_closed" and edge.code == 1002
        assert pair.accepted[0].close_reason and "protocol_error" in pair.accepted[0].close_reason


async def test_feed_raises_tunnel_protocol_error_after_dispatching_good_frames() -> None:
    from mproxy.codec import Address, pack_connection
    from mproxy.tunnel import Multiplexer

    accepted: list[str] = []

    def accept(stream: object) -> Recorder:
        accepted.append(stream.client_id)  # type: ignore[attr-defined]
        return Recorder()

    mux = Multiplexer(on_stream=accept)
    good = pack_connection(Address("IPv4", "1.2.3.4", "5"), service="tcp")
    try:
        mux.feed(good + b"\x00bad")
    except TunnelProtocolError as exc:
        assert "byte" in str(exc)
    else:
        raise AssertionError("no TunnelProtocolError")
    assert accepted == ["IPv4,1.2.3.4,5"]


async def test_dead_peer_is_detected() -> None:
    """A peer that never answers pings is declared dead after the timeout, not before."""
    from aiohttp import web
    from tests.conftest import serve_app

    from mproxy.tunnel import Multiplexer, run_tunnel

    release = asyncio.Event()

    async def silent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await asyncio.wait_for(release.wait(), 5)  # never reads: pings go unanswered
        return ws

    app = web.Application()
    app.router.add_get("/", silent)
    runner, port = await serve_app(app)
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"http://127.0.0.1:{port}/", autoping=False)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            result = await asyncio.wait_for(
                run_tunnel(ws, Multiplexer(), heartbeat=Heartbeat(interval=0.1, timeout=0.4)), 5)
            elapsed = loop.time() - t0
        assert result.reason == "dead_peer"
        assert 0.4 <= elapsed < 2.0
    finally:
        release.set()
        await runner.cleanup()


async def test_idle_streams_are_closed(tunnel_pair: PairFactory) -> None:
    limits = MuxLimits(idle_timeout=0.2)
    async with tunnel_pair(limits=limits, heartbeat=Heartbeat(interval=5, timeout=10)) as pair:
        stream, rec = pair.open()
        stream.write(b"x")
        await asyncio.wait_for(rec.closed.wait(), 5)
        await asyncio.wait_for(pair.accepted[0].closed.wait(), 5)
        # Whichever side swept first closed it with E_IDLE; the other saw the error frame or swept too.
        assert rec.close_reason is not None and ErrorCode.IDLE in rec.close_reason
        assert pair.accepted[0].close_reason is not None and ErrorCode.IDLE in pair.accepted[0].close_reason
        assert not pair.edge.streams and not pair.side.streams


async def test_shutdown_closes_with_going_away(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair() as pair:
        stream, rec = pair.open()
        stream.write(b"x")
        await rec.wait_bytes(1)
        pair.stop.set()
        assert pair.side_result is not None and pair.edge_result is not None
        assert (await asyncio.wait_for(pair.side_result, 5)).code == 1001
        edge = await asyncio.wait_for(pair.edge_result, 5)
        assert edge.reason == "peer_closed" and edge.code == 1001
        await asyncio.wait_for(rec.closed.wait(), 5)


_ = Echo


async def test_pings_keep_a_silent_but_live_tunnel_up(tunnel_pair: PairFactory) -> None:
    """No stream traffic for 10x the ping interval: pings and pongs keep it alive (dead after 3x)."""
    async with tunnel_pair(heartbeat=Heartbeat(interval=0.05, timeout=0.15)) as pair:
        await asyncio.sleep(0.6)
        assert pair.side_result is not None and not pair.side_result.done()
        assert pair.edge_result is not None and not pair.edge_result.done()
        stream, rec = pair.open()
        stream.write(b"still up")
        assert await rec.wait_bytes(8) == b"still up"


async def test_a_frame_over_the_size_limit_is_a_protocol_error() -> None:
    from mproxy.codec import Address, pack_data
    from mproxy.tunnel import Multiplexer

    mux = Multiplexer(limits=MuxLimits(max_frame_bytes=1024), clock=lambda: 0.0)
    try:
        mux.feed(pack_data(Address("IPv4", "1.2.3.4", "5"), b"x" * 2000, service="tcp")[:100])
    except TunnelProtocolError as exc:
        assert "1024" in str(exc)  # refused from the header, before buffering the body
    else:
        raise AssertionError("no TunnelProtocolError")
