"""A tunnel peer that goes silent and stops reading while the edge has data for it (issue 10 item 8: the
edge logged nothing useful when it closed such a tunnel). The edge must close it at the dead-peer timeout,
say so in one line, and close the client it carried.

Before the fix the writer, blocked on a full socket, was cancelled; that cancelled aiohttp's shared drain
future, ws.close() raised CancelledError out of run_tunnel, and the tunnel ended with no log line."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from mproxy.edge.auth import mint

from .peers import dial
from .procs import CLOSE_WAIT, SECRET, start_edge, tcp_states

TCP_PORT = 7022


async def test_a_silent_tunnel_that_does_not_read_is_closed_and_logged(tmp_path: Path, stack: Any) -> None:
    edge = await start_edge(tmp_path)  # heartbeat: ping after 1 s of silence, dead after 3 s
    stack.push_async_callback(edge.stop)
    token = mint(SECRET, ports=[TCP_PORT])
    session, _ws = await dial(f"ws://127.0.0.1:{edge.tunnel_port}/?access_token={token}")
    stack.push_async_callback(session.close)
    # The device never reads and never sends: a peer whose process froze.
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.ports["tcp"])

    async def upload() -> None:
        chunk = b"u" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(512):  # 32 MiB: far more than the socket buffers and the stream's queue hold
                writer.write(chunk)
                await writer.drain()

    pusher = asyncio.ensure_future(upload())
    stack.callback(pusher.cancel)
    started = time.monotonic()
    line = await edge.wait_log("closed: dead_peer", timeout=15)
    assert "no data or pong" in line, line
    took = time.monotonic() - started
    assert took < 8, f"the dead peer was noticed after {took:.1f} s (timeout 3 s)"
    # The client it carried is closed too.
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(5):
            while await reader.read(65536):
                pass
    writer.close()
    await asyncio.sleep(0.3)
    assert tcp_states(edge.ports["tcp"]).get(CLOSE_WAIT, 0) == 0
    assert "Traceback" not in edge.text
