"""Issue 10 item 6: ~1,000 silent connections from many source addresses (PROXY headers from a trusted
balancer) must not lock out honest clients or /healthz. A real `mproxy edge` process started with the
common soft open-file limit of 1024; before, it ran out of fds and reset everyone for the sniff window."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from mproxy import proxyproto
from mproxy.tunnel.mux import Stream, StreamHandler

from .harness import HostileTunnel, Proc, abort_all, start_edge, token

pytestmark = pytest.mark.e2e

REQUEST = b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
LISTENERS = [{"kind": "http", "listen": "127.0.0.1:0", "proxyProtocol": True}]


class _Hello(StreamHandler):
    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def data_received(self, data: bytes) -> None:
        self.stream.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        self.stream.write_eof()


def _header(i: int) -> bytes:
    source = f"10.{1 + i // 65536}.{i // 256 % 256}.{i % 256}"
    return proxyproto.encode("v1", (source, 40000), ("10.0.0.1", 80))


async def _silent(port: int, i: int) -> asyncio.StreamWriter | None:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_header(i))  # then nothing: no request line, no Host
        await writer.drain()
        return writer
    except OSError:
        return None


async def _honest(port: int, i: int) -> bytes:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
    except (OSError, TimeoutError) as exc:
        return repr(exc).encode()
    try:
        writer.write(_header(i) + REQUEST)
        return await asyncio.wait_for(reader.read(), 3)
    except (OSError, TimeoutError) as exc:
        return repr(exc).encode()
    finally:
        writer.close()


async def _healthz(edge: Proc) -> int:
    try:
        url = f"http://127.0.0.1:{edge.port('http')}/healthz"
        async with aiohttp.ClientSession() as session, session.get(
                url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def _flood(stack, edge: Proc, n: int) -> list[asyncio.StreamWriter]:  # type: ignore[no-untyped-def]
    tunnel = await HostileTunnel(edge, _Hello, token([], ["app.test"])).start()
    stack.push_async_callback(tunnel.close)
    port = edge.listener("http")
    assert (await _honest(port, 999_000)).startswith(b"HTTP/1.1 200")
    held: list[asyncio.StreamWriter] = []
    stack.callback(abort_all, held)
    for start in range(0, n, 100):
        got = await asyncio.gather(*(_silent(port, i) for i in range(start, min(n, start + 100))))
        held += [w for w in got if w is not None]
    await asyncio.sleep(0.5)
    return held


async def test_silent_flood_leaves_honest_clients_and_healthz_served(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    edge = await start_edge(tmp_path, listeners=LISTENERS, trustedProxies=["127.0.0.0/8"], nofile=1024)
    stack.push_async_callback(edge.stop)
    held = await _flood(stack, edge, 1100)
    assert len(held) == 1100
    answers = await asyncio.gather(*(_honest(edge.listener("http"), 900_000 + i) for i in range(5)))
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
    assert await _healthz(edge) == 200
    assert edge.fds() > 1100  # the silent ones are all still held: the limit was raised, not hit


async def test_pre_routing_cap_sheds_the_oldest(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    edge = await start_edge(tmp_path, listeners=LISTENERS, trustedProxies=["127.0.0.0/8"],
                            limits={"preRoutingConnections": 200})
    stack.push_async_callback(edge.stop)
    base = edge.fds()
    held = await _flood(stack, edge, 500)
    fds = edge.fds()
    assert fds < base + 200 + 20, f"{fds - base} fds over the baseline with a cap of 200"
    answers = await asyncio.gather(*(_honest(edge.listener("http"), 900_000 + i) for i in range(5)))
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
    assert await _healthz(edge) == 200
    # the oldest were shed (the edge closed them), the newest still wait for their Host
    first, last = held[0], held[-1]
    assert await asyncio.wait_for(first.transport.get_protocol()._stream_reader.read(), 2) == b""  # type: ignore[attr-defined]
    assert not last.transport.is_closing()
    # each shed connection is counted as `overloaded` (before: folded into "other")
    assert await edge.metric("mproxy_edge_rejects_total", reason="overloaded") >= 500 - 200
    assert await edge.metric("mproxy_edge_rejects_total", reason="other") == 0
