"""run_tunnel never lets an exception out without closing the mux and the WebSocket: a bug in any pump ends
that tunnel alone (1011, one error line, no traceback), its streams closed."""

from __future__ import annotations

import asyncio
import logging

import pytest

from .conftest import PairFactory


async def test_an_exception_in_a_pump_closes_the_mux_and_the_websocket(
        tunnel_pair: PairFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mproxy.tunnel")
    async with tunnel_pair() as pair:
        stream, rec = pair.open()
        stream.write(b"ping")
        await rec.wait_bytes(4)

        def broken(_: object) -> None:
            raise ValueError("a bug in a control handler")

        pair.side._on_control = broken
        pair.edge.send_control([7, "anything"])
        assert pair.side_result is not None and pair.edge_result is not None
        side = await asyncio.wait_for(pair.side_result, 5)
        assert side.reason == "internal_error" and side.code == 1011
        assert "ValueError: a bug in a control handler" in side.detail
        assert pair.side.closed and not pair.side.streams
        assert pair.accepted[0].close_reason is not None and "internal_error" in pair.accepted[0].close_reason
        edge = await asyncio.wait_for(pair.edge_result, 5)
        assert edge.reason == "peer_closed" and edge.code == 1011  # the close frame reached the peer
        await asyncio.wait_for(rec.closed.wait(), 5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None, [r.getMessage() for r in errors]


async def test_cancelling_the_runner_still_closes_the_mux(tunnel_pair: PairFactory) -> None:
    async with tunnel_pair() as pair:
        stream, rec = pair.open()
        stream.write(b"ping")
        await rec.wait_bytes(4)
        assert pair.edge_ws is not None
        # the edge side runs run_tunnel inside the aiohttp request handler task of the only connection
        runner = next(t for t in asyncio.all_tasks() if "RequestHandler" in repr(t.get_coro()))
        runner.cancel()
        await asyncio.wait_for(rec.closed.wait(), 5)
        assert pair.edge.closed and rec.close_reason is not None
