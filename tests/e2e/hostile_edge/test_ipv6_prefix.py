"""Issue 10 item 8, on a real `mproxy edge` process: per-address limits count IPv6 clients per /64 (one
host usually holds a whole /64: counting each address let it open connectionsPerClient from each)."""

from __future__ import annotations

import asyncio

import pytest

from mproxy import proxyproto

from .harness import start_edge

pytestmark = pytest.mark.e2e

LISTENERS = [{"kind": "http", "listen": "127.0.0.1:0", "proxyProtocol": True}]


async def _hold(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(proxyproto.encode("v2", (source, 40000), ("2001:db8::1", 80)))
    await writer.drain()
    return reader, writer


async def test_ipv6_clients_share_a_limit_per_64(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    edge = await start_edge(tmp_path, listeners=LISTENERS, trustedProxies=["127.0.0.0/8"],
                            limits={"connectionsPerClient": 2})
    stack.push_async_callback(edge.stop)
    port = edge.listener("http")
    held = [await _hold(port, f"2001:db8:7:1::{i + 1:x}") for i in range(2)]  # silent: admitted, waiting
    for _, writer in held:
        stack.callback(writer.transport.abort)
    await asyncio.sleep(0.3)
    reader, writer = await _hold(port, "2001:db8:7:1:ffff::9")  # same /64, another address
    writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 429"), answer  # before: admitted (each address counted alone)
    reader, writer = await _hold(port, "2001:db8:7:2::1")  # another /64: its own budget
    writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 502"), answer  # admitted; no tunnel serves app.test
