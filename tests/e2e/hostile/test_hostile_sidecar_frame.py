"""One frame from an edge must not kill a sidecar's tunnel: data with no `connection` frame before it, a
255-byte header and a 1-digit datalen. The reply would need a longer datalen than fits; before the fix
the writer raised LocalProtocolError, the TunnelClient task died, nothing was logged, it never redialled,
and /status said connected and /readyz 200. Now the stream is never opened (no frame of it could be
packed) and the tunnel carries on; and a closed tunnel is redialled as always."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from tests.ports import free_port

from mproxy.codec import Address, hello_message, pack_control, pack_data

from .peers import HostileEdge
from .procs import spawn


def long_header_data() -> bytes:
    # A long address, not a long port: the parser refuses a port that is not canonical 0-65535.
    address = "9" * (255 - len("IPv4,,1,1,tcp,,"))
    frame = pack_data(Address("IPv4", address, "1"), b"x", service="tcp")
    assert frame[1] == 255
    return frame


async def http_get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


async def test_a_frame_whose_reply_cannot_be_packed_leaves_the_sidecar_tunnel_up(
        tmp_path: Path, stack: Any) -> None:
    sockets: list[web.WebSocketResponse] = []
    hold = asyncio.Event()

    async def on_tunnel(ws: web.WebSocketResponse) -> None:
        sockets.append(ws)
        await ws.send_bytes(pack_control(hello_message()))
        if len(sockets) == 1:
            await ws.send_bytes(long_header_data())

        async def drain() -> None:
            async for _ in ws:
                pass

        reader, held = asyncio.ensure_future(drain()), asyncio.ensure_future(hold.wait())
        await asyncio.wait([reader, held], return_when=asyncio.FIRST_COMPLETED)
        reader.cancel()
        held.cancel()

    async def banner(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"B" * 100)  # the reply needs a 3-digit datalen: a 257-byte header
        await w.drain()
        await asyncio.sleep(5)
        w.close()

    backend = await asyncio.start_server(banner, "127.0.0.1", 0)
    stack.callback(backend.close)
    relay = await HostileEdge(on_tunnel).start()
    stack.push_async_callback(relay.close)
    http_port = free_port()
    cfg = {
        "edge": {"urls": [relay.url], "tokenIn": "handshake"},
        "routes": [{"name": "r", "match": {}, "backend": {"host": "127.0.0.1",
                                                          "port": backend.sockets[0].getsockname()[1]}}],
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3},
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.5},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "logging": {"format": "text", "level": "info"},
        "drainSeconds": 1,
    }
    side = await spawn("sidecar", cfg, tmp_path)
    stack.push_async_callback(side.stop)
    await relay.wait_tunnels(1, timeout=30)
    await asyncio.sleep(1.0)
    # Still the first tunnel, up, and nothing failed.
    assert relay.tunnels == 1 and not sockets[0].closed
    status = json.loads((await http_get(http_port, "/status"))[1])
    assert status["tunnels"][0]["state"] == "connected", status
    assert (await http_get(http_port, "/readyz"))[0] == 200
    # The edge goes away: the sidecar dials again (before the fix its task was dead: it never did).
    hold.set()
    await relay.wait_tunnels(2, timeout=10)
    assert "Traceback" not in side.text and "LocalProtocolError" not in side.text, side.text
