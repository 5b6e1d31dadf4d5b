"""Hostile WebSocket peers written with aiohttp: a tunnel client that dials a real edge, and an edge that a
real sidecar dials. Neither reads what it is sent unless told to (aiohttp stops reading the socket once
64 KiB of messages wait unread), so the process under test sees a peer that does not drain."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from mproxy.codec import pack_control


def unknown_commands(n: int, name_len: int, first_id: int = 2) -> bytes:
    """`n` control requests naming an unknown command of `name_len` characters (each reply quotes it)."""
    name = "x" * name_len
    return b"".join(pack_control([first_id + i, name]) for i in range(n))


async def flood(send: Callable[[bytes], Awaitable[None]], message: bytes, seconds: float) -> float | None:
    """Send `message` over and over for `seconds`; the time the peer closed on us, or None if it did not.

    One task sends (never cancelled mid-send: aiohttp shares one drain waiter between senders)."""
    started = time.monotonic()

    async def pump() -> float:
        try:
            while True:
                await send(message)
                await asyncio.sleep(0)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            return time.monotonic() - started

    task = asyncio.ensure_future(pump())
    await asyncio.wait([task], timeout=seconds)
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return None


async def dial(url: str, **kw: Any) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(url, autoping=False, max_msg_size=0, **kw)
    except BaseException:
        await session.close()
        raise
    return session, ws


class HostileEdge:
    """A WebSocket endpoint a real sidecar dials; `on_tunnel(ws)` runs for each tunnel it opens."""

    def __init__(self, on_tunnel: Callable[[web.WebSocketResponse], Awaitable[None]]) -> None:
        self.on_tunnel = on_tunnel
        self.tunnels = 0
        self.new_tunnel = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, max_msg_size=0)
        await ws.prepare(request)
        self.tunnels += 1
        self.new_tunnel.set()
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            await self.on_tunnel(ws)
        return ws

    async def start(self) -> HostileEdge:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def wait_tunnels(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.tunnels < n:
                self.new_tunnel.clear()
                await self.new_tunnel.wait()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
