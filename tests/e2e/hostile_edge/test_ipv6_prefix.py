"""Issue 10 item 8, on real `mproxy edge` and `mproxy sidecar` processes: per-address limits count IPv6
clients per /64 (one host usually holds a whole /64: counting each address let it open
maxStreamsPerClient, or a tunnel's maxStreamsPerClient, from each)."""

from __future__ import annotations

import asyncio

import pytest

from mproxy import proxyproto
from mproxy.codec import Address
from mproxy.tunnel.mux import Stream, StreamEnd, StreamHandler

from .harness import TCP_PORT, HostileEdge, abort_all, start_edge, start_sidecar

pytestmark = pytest.mark.e2e

LISTENERS = [{"kind": "http", "listen": "127.0.0.1:0", "proxyProtocol": True}]


async def _hold(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(proxyproto.encode("v2", (source, 40000), ("2001:db8::1", 80)))
    await writer.drain()
    return reader, writer


async def test_ipv6_clients_share_a_limit_per_64(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    edge = await start_edge(tmp_path, listeners=LISTENERS, trustedProxies=["127.0.0.0/8"],
                            limits={"maxStreamsPerClient": 2})
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
    assert answer.startswith(b"HTTP/1.1 404"), answer  # admitted; no tunnel serves app.test


class _Rec(StreamHandler):
    def __init__(self) -> None:
        self.error: tuple[str, str] | None = None
        self.closed = asyncio.Event()

    def error_received(self, message: str, code: str) -> None:
        self.error = (code, message)

    def stream_closed(self, end: StreamEnd) -> None:
        self.closed.set()


async def test_sidecar_counts_streams_per_client_per_64(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    held: list[asyncio.StreamWriter] = []

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    stack.callback(server.close)
    stack.callback(abort_all, held)
    edge = await HostileEdge().start()
    stack.push_async_callback(edge.close)
    sidecar = await start_sidecar(tmp_path, edge.port, server.sockets[0].getsockname()[1],
                                  limits={"maxStreamsPerClient": 2})
    stack.push_async_callback(sidecar.stop)
    await asyncio.wait_for(edge.connected.wait(), 20)
    assert edge.mux is not None

    def open_from(address: str) -> _Rec:
        rec = _Rec()
        assert edge.mux is not None
        stream: Stream = edge.mux.open_stream(Address("IPv6", address, "40000"), rec, service="tcp",
                                              serviceport=TCP_PORT)
        stream.write(b"hi")
        return rec

    first = [open_from(f"2001:db8:7:1::{i + 1:x}") for i in range(2)]
    async with asyncio.timeout(5):
        while len(held) < 2:
            await asyncio.sleep(0.02)
    third = open_from("2001:db8:7:1:ffff::9")  # same /64, another address
    await asyncio.wait_for(third.closed.wait(), 5)  # before: accepted and dialled
    assert third.error is not None and third.error[0] == "E_LIMIT", third.error
    other = open_from("2001:db8:7:2::1")  # another /64: its own budget
    async with asyncio.timeout(5):
        while len(held) < 3:
            await asyncio.sleep(0.02)
    assert not other.closed.is_set() and not any(r.closed.is_set() for r in first)
