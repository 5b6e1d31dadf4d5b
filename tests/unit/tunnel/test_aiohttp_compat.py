"""mproxy.aiohttp_compat: the aiohttp internals the tunnel's fast frame path uses are all still there.

An aiohttp upgrade that moves one of them makes `frame_sender` fall back to `send_bytes` (three copies per
frame, and the transport's write buffer no longer held at zero): that must fail here, by name, not pass
as a silent slowdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.conftest import serve_app

from mproxy.aiohttp_compat import missing, raw_writer, transport_of
from mproxy.tunnel.wsframe import frame_sender


@pytest.fixture
async def ws_pair() -> AsyncIterator[tuple[web.WebSocketResponse, aiohttp.ClientWebSocketResponse]]:
    accepted: asyncio.Future[web.WebSocketResponse] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        accepted.set_result(ws)
        await done.wait()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner, port = await serve_app(app)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/") as client:
        server = await asyncio.wait_for(accepted, 5)
        yield server, client
        done.set()
        await client.close()
    await runner.cleanup()


async def test_every_private_name_is_there_on_both_sides(ws_pair: tuple[Any, Any]) -> None:
    for side, ws in zip(("server", "client"), ws_pair, strict=True):
        gone = missing(ws)
        assert not gone, (
            f"aiohttp {aiohttp.__version__} has no {', '.join(gone)} on a {side} WebSocket: the tunnel's "
            "fast frame path is off; update sidecar/mproxy/aiohttp_compat.py for this aiohttp")
        raw = raw_writer(ws)
        assert raw is not None and raw.compress == 0 and raw.use_mask == (side == "client")
        assert transport_of(ws) is raw.transport and not raw.closing() and not raw.paused()
        assert frame_sender(ws) != ws.send_bytes  # the fast path, not the fallback


async def test_a_frame_written_raw_is_read_whole_by_aiohttp(ws_pair: tuple[Any, Any]) -> None:
    server, client = ws_pair
    send = frame_sender(client)  # masked (client to server)
    await send(bytearray(b"x" * 70000))  # a 64-bit length header
    msg = await asyncio.wait_for(server.receive(), 5)
    assert msg.type is aiohttp.WSMsgType.BINARY and msg.data == b"x" * 70000
    await frame_sender(server)(bytearray(b"hello"))  # unmasked (server to client)
    msg = await asyncio.wait_for(client.receive(), 5)
    assert msg.data == b"hello"


class _Other:
    """A WebSocket of an aiohttp laid out otherwise: no private writer."""

    async def send_bytes(self, data: bytearray) -> None:
        raise AssertionError("not sent in this test")


def test_another_layout_is_named_and_falls_back_to_send_bytes() -> None:
    ws = _Other()
    assert "ws._writer" in missing(ws)
    assert raw_writer(ws) is None and transport_of(ws) is None
    assert frame_sender(ws) == ws.send_bytes


class _Protocol:
    _paused = False

    async def _drain_helper(self) -> None:
        raise AssertionError("not drained in this test")


class _GoneWriter:
    """aiohttp's writer after its connection went away: every name there, no transport."""

    transport = None
    protocol = _Protocol()
    compress = 0
    use_mask = True
    _closing = False


def test_a_writer_without_a_transport_falls_back_to_send_bytes() -> None:
    ws = _Other()
    ws._writer = _GoneWriter()  # type: ignore[attr-defined]
    assert missing(ws) == [] and raw_writer(ws) is None
    assert frame_sender(ws) == ws.send_bytes
