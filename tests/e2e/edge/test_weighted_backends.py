"""Weighted backends of one route (Gateway API TCPRouteWeightedRouting): the edge in process, a real
`mproxy sidecar` process, tagged echo backends; hundreds of real TCP clients."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from tests.e2e.udp.harness import client as udp_client
from tests.e2e.udp.harness import udp_echo

from .harness import Parts, sidecar_process, status, tagged_echo, token, tunnel_url

pytestmark = pytest.mark.e2e

SPLIT, REFUSING = 7101, 7102  # the public ports of the two tcp listeners
LIMITS = {"connectionRate": 100000, "connectionBurst": 100000}  # hundreds of clients from one address


async def one(port: int) -> bytes:
    """Connect, send a line, half-close, read everything: b"a:hi" served by a, b"" refused (a close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"hi")
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b"reset"
    finally:
        writer.close()


async def many(port: int, n: int, concurrency: int = 16) -> Counter[bytes]:
    gate = asyncio.Semaphore(concurrency)

    async def bounded() -> bytes:
        async with gate:
            return await one(port)

    return Counter(await asyncio.gather(*(bounded() for _ in range(n))))


async def wait_ports(relay, want: set[int], within: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not want <= {int(p) for p in (await status(relay))["ports"]}:
        assert time.monotonic() < deadline, f"tunnel never granted {want}: {await status(relay)}"
        await asyncio.sleep(0.05)


async def test_streams_split_by_weight_and_a_refused_share(parts: Parts) -> None:
    relay = await parts.edge(listeners=[
        {"kind": "tcp", "listen": "127.0.0.1:0", "publicPort": SPLIT},
        {"kind": "tcp", "listen": "127.0.0.1:0", "publicPort": REFUSING},
    ], limits=LIMITS)
    (a_port, a_seen), (b_port, b_seen), (c_port, c_seen) = [
        await tagged_echo(parts, tag) for tag in (b"a", b"b", b"c")]
    await sidecar_process(parts, "w", tunnel_url(relay), token(ports_=[SPLIT, REFUSING]), [
        {"name": "split", "match": {"services": ["tcp"], "ports": [SPLIT]}, "backends": [
            {"host": "127.0.0.1", "port": a_port, "weight": 3},
            {"host": "127.0.0.1", "port": b_port, "weight": 1},
            {"host": "127.0.0.1", "port": c_port, "weight": 0}]},
        {"name": "refusing", "match": {"services": ["tcp"], "ports": [REFUSING]}, "backends": [
            {"host": "127.0.0.1", "port": a_port, "weight": 1},
            {"weight": 1, "refuse": True}]},
    ])
    await wait_ports(relay, {SPLIT, REFUSING})
    split, refusing = (item.port for item in relay.listeners)

    got = await many(split, 400)
    assert set(got) == {b"a:hi", b"b:hi"}, got  # weight 0 is never picked; nothing refused or reset
    # 3:1 of 400 is 300:100; the binomial standard deviation is 8.7, so +-40 is over 4.5 sigma.
    assert abs(got[b"a:hi"] - 300) <= 40, got
    assert (a_seen[0], b_seen[0], c_seen[0]) == (got[b"a:hi"], got[b"b:hi"], 0)

    before = a_seen[0]
    got = await many(refusing, 200)
    assert set(got) == {b"a:hi", b""}, got  # a refused stream is closed before any byte, never reset
    assert abs(got[b""] - 100) <= 30, got  # sd 7.1
    assert a_seen[0] - before == got[b"a:hi"]  # a refused stream never reached a backend
    assert (await many(split, 20)).keys() <= {b"a:hi", b"b:hi"}  # the tunnel carries on


async def test_udp_clients_split_by_weight(parts: Parts) -> None:
    relay = await parts.edge(listeners=[{"kind": "udp", "listen": "127.0.0.1:0", "publicPort": SPLIT}],
                             limits=LIMITS)
    echoes = []
    for _ in range(2):
        transport, echo, port = await udp_echo()
        parts.later(_close, transport)
        echoes.append((echo, port))
    await sidecar_process(parts, "u", tunnel_url(relay), token(ports_=[SPLIT]), [
        {"name": "dns", "match": {"services": ["udp"]}, "backends": [
            {"host": "127.0.0.1", "port": echoes[0][1], "weight": 3},
            {"host": "127.0.0.1", "port": echoes[1][1], "weight": 1},
            {"weight": 0, "refuse": True}]}])
    await wait_ports(relay, {SPLIT})
    public = relay.listeners[0].port
    for i in range(80):  # each client (a new source port) is one stream: one pick
        c = await udp_client(public)
        try:
            assert await c.ask(b"q%d" % i) == b"q%d" % i
            assert await c.ask(b"again") == b"again"  # a client keeps its backend
        finally:
            c.close()
    a, b = (echo.received for echo, _ in echoes)
    assert a + b == 160 and a % 2 == 0 and b % 2 == 0
    assert abs(a // 2 - 60) <= 17, (a, b)  # 3:1 of 80 clients; sd 3.9


async def _close(transport: asyncio.DatagramTransport) -> None:
    transport.close()
