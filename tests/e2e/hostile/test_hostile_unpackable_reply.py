"""One frame whose reply cannot be packed must cost nothing: data for an unknown client whose client id
leaves no room in a 255-byte header for our E_NO_CONN reply.

Before the fix `LocalProtocolError` escaped run_tunnel: mux.close() never ran, the tunnel's client sockets
stayed in CLOSE_WAIT, the idle sweep stopped, and the per-address admission slots were never released (that
address then got 429 on every listener); unauthenticated, the same frame printed a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from mproxy.codec import Address, Connection, Parser, pack_data
from mproxy.edge.auth import mint

from .peers import dial
from .procs import CLOSE_WAIT, SECRET, EdgeProc, start_edge, tcp_states

LIMIT = 2  # maxStreamsPerClient: the two clients below take every slot of 127.0.0.1
TCP_PORT = 7022


def unpackable_frame() -> bytes:
    """Data for an unknown client: our header is 255 bytes, the reply's (",error" and more) cannot be."""
    # A long address, not a long port: the parser refuses a port that is not canonical 0-65535.
    address = "9" * (255 - len("IPv4,,1,1,tcp,,"))
    frame = pack_data(Address("IPv4", address, "1"), b"x", service="tcp")
    assert frame[1] == 255
    return frame


class Device:
    """A tunnel that reads and records, sending only what the test says."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.connections: list[Connection] = []
        self._parser = Parser()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.connections += [e for e in self._parser.feed(msg.data) if isinstance(e, Connection)]

    async def wait_connections(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.connections) < n:
                await asyncio.sleep(0.02)


async def rejects(edge: EdgeProc, reason: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{edge.http_port}/metrics") as r:
        text = await r.text()
    m = re.search(rf'mproxy_edge_rejects_total{{reason="{reason}"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    out = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                out += chunk
    return out


async def test_an_unpackable_reply_costs_no_socket_and_no_admission_slot(tmp_path: Path, stack: Any) -> None:
    edge = await start_edge(tmp_path, limits={"maxStreamsPerClient": LIMIT})
    stack.push_async_callback(edge.stop)
    token = mint(SECRET, domains=["app.test"], ports=[TCP_PORT])
    session, ws = await dial(f"ws://127.0.0.1:{edge.tunnel_port}/?access_token={token}")
    stack.push_async_callback(session.close)
    device = Device(ws)
    clients = [await asyncio.open_connection("127.0.0.1", edge.ports["tcp"]) for _ in range(LIMIT)]
    for _, w in clients:
        w.write(b"hello")
    await device.wait_connections(LIMIT)

    await ws.send_bytes(unpackable_frame())
    # The tunnel carries on: data for a real stream still reaches its client.
    first = device.connections[0]
    await ws.send_bytes(pack_data(first.addr, b"still here", service="tcp"))
    reader = next(r for (r, w) in clients if w.get_extra_info("sockname")[1] == int(first.addr.port))
    assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"

    # The tunnel goes away: every client socket is closed by the edge, nothing is left in CLOSE_WAIT.
    await ws.close()
    for r, _ in clients:
        await read_all(r, 5)
    for _, w in clients:
        w.close()
    await asyncio.sleep(0.5)
    states = tcp_states(edge.ports["tcp"])
    assert states.get(CLOSE_WAIT, 0) == 0, f"edge sockets left in CLOSE_WAIT: {states}"

    # And 127.0.0.1 is admitted again on every listener: turned away for want of a tunnel, not for limits.
    before = await rejects(edge, "too_many_connections")
    r, w = await asyncio.open_connection("127.0.0.1", edge.ports["http"])
    w.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    status = (await read_all(r, 5)).split(b"\r\n", 1)[0]
    w.close()
    assert b"404" in status, status
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        ctx = ssl.create_default_context()
        r, w = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", edge.ports["tls"], ssl=ctx, server_hostname="app.test"), 5)
        w.close()
    r, w = await asyncio.open_connection("127.0.0.1", edge.ports["tcp"])
    await read_all(r, 5)
    w.close()
    assert await rejects(edge, "too_many_connections") == before
    assert await rejects(edge, "no_tunnel") >= 3
    assert "Traceback" not in edge.text


async def test_the_same_frame_without_a_token_prints_no_traceback(tmp_path: Path, stack: Any) -> None:
    edge = await start_edge(tmp_path)
    stack.push_async_callback(edge.stop)
    session, ws = await dial(f"ws://127.0.0.1:{edge.tunnel_port}/")
    stack.push_async_callback(session.close)
    device = Device(ws)
    await ws.send_bytes(unpackable_frame())
    await asyncio.sleep(0.5)
    assert not device.task.done(), "the edge dropped the tunnel over one unanswerable frame"
    assert "Traceback" not in edge.text and "Error" not in edge.text, edge.text
