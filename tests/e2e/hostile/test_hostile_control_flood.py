"""A peer that floods the control channel and never reads the replies is cut off, in both roles, with the
process's memory bounded: replies (and every urgent frame) are bounded in count and bytes, the quoted
command name is truncated, and going over the budget closes the tunnel with 1008, logged once.

Before the fix the edge grew by ~170 MB/s (no token needed) and the sidecar likewise toward a hostile edge.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from tests.ports import free_port

from mproxy.codec import Parser, hello_message, pack_control

from .peers import HostileEdge, dial, flood, unknown_commands
from .procs import spawn, start_edge

pytestmark = pytest.mark.e2e

# ~250 KB per message of requests whose replies are longer than they are: a peer that does not read
# fills the budget fast (before the fix the replies also quoted the name in full: with 4,000-character
# names the edge grew by 188 MB in 4 s here).
FLOOD = unknown_commands(3000, 60)
SECONDS = 4.0
MAX_GROWTH_MB = 40.0


async def test_edge_cuts_a_control_flood_that_never_reads(tmp_path: Path, stack: Any) -> None:
    edge = await start_edge(tmp_path)
    stack.push_async_callback(edge.stop)
    await asyncio.sleep(0.3)
    before = edge.rss_mb()
    session, ws = await dial(f"ws://127.0.0.1:{edge.tunnel_port}/")  # no token at all
    stack.push_async_callback(session.close)
    closed_after = await flood(ws.send_bytes, FLOOD, SECONDS)
    growth = edge.rss_mb() - before
    print(f"edge RSS growth {growth:.1f} MB, closed after {closed_after} s")
    assert closed_after is not None, f"the edge kept a non-reading flooder for {SECONDS} s (+{growth:.0f} MB)"
    assert growth < MAX_GROWTH_MB, f"edge RSS grew {growth:.0f} MB under a control flood"
    line = await edge.wait_log("closed: overflow")
    assert "WARNING" in line and "does not read" in line, line
    await asyncio.sleep(0.2)
    assert sum("closed: overflow" in ln for ln in edge.logs) == 1, edge.text
    assert "Traceback" not in edge.text


async def test_edge_truncates_a_quoted_unknown_command(tmp_path: Path, stack: Any) -> None:
    edge = await start_edge(tmp_path)
    stack.push_async_callback(edge.stop)
    session, ws = await dial(f"ws://127.0.0.1:{edge.tunnel_port}/")
    stack.push_async_callback(session.close)
    await ws.send_bytes(pack_control([5, "y" * 5000]))
    parser = Parser()
    replies: list[Any] = []
    async with asyncio.timeout(5):
        while not any(isinstance(v, list) and v and v[0] == -5 for v in replies):
            msg = await ws.receive()
            replies += [getattr(e, "value", None) for e in parser.feed(msg.data)]
    answer = next(v for v in replies if isinstance(v, list) and v and v[0] == -5)
    assert answer[1]["code"] == "E_UNKNOWN_COMMAND"
    assert len(answer[1]["message"]) <= 100 and "yyyy" in answer[1]["message"], answer


def _sidecar_config(url: str) -> dict[str, Any]:
    return {
        "edge": {"urls": [url], "tokenIn": "handshake"},
        "routes": [{"name": "r", "match": {}, "backend": {"host": "127.0.0.1", "port": free_port()}}],
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3},
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.5},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"format": "text", "level": "info"},
        "drainSeconds": 1,
    }


async def test_sidecar_cuts_an_edge_that_floods_control_and_never_reads(tmp_path: Path, stack: Any) -> None:
    results: list[float | None] = []

    async def on_tunnel(ws: web.WebSocketResponse) -> None:
        if results:  # the redial after the cut: behave
            await ws.send_bytes(pack_control(hello_message()))
            await asyncio.sleep(5)
            return
        await ws.send_bytes(pack_control(hello_message()))
        results.append(await flood(ws.send_bytes, FLOOD, SECONDS))

    relay = await HostileEdge(on_tunnel).start()
    stack.push_async_callback(relay.close)
    side = await spawn("sidecar", _sidecar_config(relay.url), tmp_path)
    stack.push_async_callback(side.stop)
    await relay.wait_tunnels(1, timeout=30)
    before = side.rss_mb()
    async with asyncio.timeout(SECONDS + 5):
        while not results:
            await asyncio.sleep(0.05)
    growth = side.rss_mb() - before
    print(f"sidecar RSS growth {growth:.1f} MB, closed after {results[0]} s")
    assert results[0] is not None, f"the sidecar kept a non-reading flooding edge for {SECONDS} s"
    assert growth < MAX_GROWTH_MB, f"sidecar RSS grew {growth:.0f} MB under a control flood"
    await side.wait_log("overflow")
    await relay.wait_tunnels(2, timeout=10)  # and it dials again
    assert "Traceback" not in side.text
