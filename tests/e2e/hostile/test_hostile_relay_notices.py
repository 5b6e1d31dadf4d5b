"""A real sidecar does not answer telebit-relay's unsolicited `grant` and `access_token` (issue 11 item 4):
before, it sent [-2,null] and [-3,null], and the relay logged "received response to unknown command"."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from tests.ports import free_port

from mproxy.codec import Control, Parser, hello_message, pack_control

from .peers import HostileEdge
from .procs import spawn


async def test_the_sidecar_answers_hello_but_not_grant_or_access_token(tmp_path: Path, stack: Any) -> None:
    got: list[Any] = []

    async def on_tunnel(ws: web.WebSocketResponse) -> None:
        await ws.send_bytes(pack_control(hello_message()))
        await ws.send_bytes(pack_control([2, "grant", {"domains": ["app.test"], "ports": []}]))
        await ws.send_bytes(pack_control([3, "access_token", "not-a-secret"]))
        await ws.send_bytes(pack_control([4, "frobnicate"]))  # a real command: answered
        parser = Parser()
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                got.extend(e.value for e in parser.feed(msg.data) if isinstance(e, Control))

    relay = await HostileEdge(on_tunnel).start()
    stack.push_async_callback(relay.close)
    cfg = {
        "edge": {"urls": [relay.url], "tokenIn": "handshake"},
        "routes": [{"name": "r", "match": {}, "backend": {"host": "127.0.0.1", "port": free_port()}}],
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"format": "text", "level": "info"},
        "drainSeconds": 1,
    }
    side = await spawn("sidecar", cfg, tmp_path)
    stack.push_async_callback(side.stop)
    async with asyncio.timeout(30):
        while not any(isinstance(v, list) and v and v[0] == -4 for v in got):
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # anything sent after the answer to id 4 would be here by now
    ids = [v[0] for v in got if isinstance(v, list) and v]
    assert -1 in ids and -4 in ids, got
    assert -2 not in ids and -3 not in ids, f"the sidecar answered an unsolicited relay message: {got}"
