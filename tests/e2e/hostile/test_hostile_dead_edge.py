"""An edge that goes silent and stops reading while the sidecar has data for it. The sidecar must close
that tunnel at the dead-peer timeout, log it, and dial again.

The edge's side of the same case lost its log line (aiohttp's shared drain future, cancelled with the
blocked writer, made ws.close() raise CancelledError: see test_hostile_dead_peer.py). The sidecar's
client WebSocket passed this test before that fix too; it stays as the guard for the sidecar's half of
the case, which the new close path (abort after 2 s, supervision) also runs through."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from tests.ports import free_port

from mproxy.codec import Address, hello_message, pack_connection, pack_control

from .peers import HostileEdge
from .procs import spawn


async def test_a_silent_non_reading_edge_is_dropped_and_redialled(tmp_path: Path, stack: Any) -> None:
    async def flood(_reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        chunk = b"d" * 65536
        try:
            for _ in range(512):  # 32 MiB toward the edge: far more than the socket buffers hold
                w.write(chunk)
                await w.drain()
        except ConnectionError:
            pass
        w.close()

    backend = await asyncio.start_server(flood, "127.0.0.1", 0)
    stack.callback(backend.close)

    async def on_tunnel(ws: web.WebSocketResponse) -> None:
        await ws.send_bytes(pack_control(hello_message()))
        if relay.tunnels == 1:  # the first tunnel: open a stream, then freeze (no reads, no writes)
            await ws.send_bytes(pack_connection(Address("IPv4", "10.0.0.1", "5000"), service="tcp",
                                                serviceport=22))
            await asyncio.sleep(30)
            return
        async for _ in ws:
            pass

    relay = await HostileEdge(on_tunnel).start()
    stack.push_async_callback(relay.close)
    cfg = {
        "edge": {"urls": [relay.url], "tokenIn": "handshake"},
        "routes": [{"name": "r", "match": {},
                    "backend": {"host": "127.0.0.1", "port": backend.sockets[0].getsockname()[1]}}],
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3},
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.5},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"format": "text", "level": "info"},
        "drainSeconds": 1,
    }
    side = await spawn("sidecar", cfg, tmp_path)
    stack.push_async_callback(side.stop)
    await relay.wait_tunnels(1, timeout=30)
    line = await side.wait_log("tunnel closed: dead_peer", timeout=15)
    assert "no data or pong" in line, line
    await relay.wait_tunnels(2, timeout=10)
    assert "Traceback" not in side.text
