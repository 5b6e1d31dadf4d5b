"""A UDP flood is dropped, never buffered: per-client rate limits, bounded queues, bounded memory."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from mproxy.metrics.udp import DROP_REASONS

from .harness import PUBLIC_PORT, Stack, sample, until

pytestmark = pytest.mark.e2e


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def blast(port: int, count: int, size: int) -> None:
    """Send `count` datagrams as fast as the kernel takes them (a thread: the loop keeps serving)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        payload = b"f" * size
        for _ in range(count):
            s.send(payload)


async def test_a_client_over_its_datagram_rate_is_dropped_and_counted(stack: Stack) -> None:
    # 0.01/s: no token comes back during the test however slowly the edge reads (a loaded machine).
    listener, echo = await stack.start_echo(listener={"datagramRate": 0.01, "datagramBurst": 5})
    c = await stack.client(listener.port)
    for i in range(20):
        c.send(b"%d" % i)
    got = [await c.recv() for _ in range(5)]
    assert got == [b"0", b"1", b"2", b"3", b"4"]  # the burst, in order; the other 15 dropped at the edge
    reg = stack.edge.metrics.registry  # type: ignore[union-attr]
    assert sample(reg, "mproxy_edge_udp_dropped_total", {"reason": "rate_limited"}) == 15
    await asyncio.sleep(0.2)
    assert c.got.empty() and echo.received == 5


async def test_a_flood_is_dropped_not_buffered(stack: Stack) -> None:
    # No rate limit to speak of: the bounded queues are what must hold.
    fast = {"datagramRate": 10_000_000, "datagramBurst": 10_000_000, "tunnelDatagramRate": 10_000_000}
    listener, echo = await stack.start_echo(listener=fast)
    c = await stack.client(listener.port)
    assert await c.ask(b"warm up") == b"warm up"
    reg = stack.edge.metrics.registry  # type: ignore[union-attr]
    before = rss_bytes()
    count, size = 30_000, 1400  # 42 MB offered in well under a second
    started = time.monotonic()
    await asyncio.to_thread(blast, listener.port, count, size)
    elapsed = time.monotonic() - started
    labels = {"port": str(PUBLIC_PORT), "direction": "in"}

    def settled() -> bool:
        return len(listener.clients) == 2 and all(
            item.stream is not None and item.stream.buffered == 0 for item in listener.clients.values())

    await until(settled, 10, "the edge's queue for the client to drain")
    grown = rss_bytes() - before
    relayed = sample(reg, "mproxy_edge_udp_datagrams_total", labels) - 1
    dropped = sum(sample(reg, "mproxy_edge_udp_dropped_total", {"reason": r}) for r in DROP_REASONS)
    # What the edge read was relayed or dropped (the kernel drops the rest before we read it): nothing kept.
    assert 0 < relayed + dropped <= count
    offered = count * size / 1e6
    assert grown < 24 * 1024 * 1024, f"RSS grew {grown / 1e6:.1f} MB during a {offered:.0f} MB flood"
    print(f"flood: {count} x {size} B in {elapsed:.2f} s; relayed {relayed:.0f}, dropped {dropped:.0f}, "
          f"echoed {echo.received}, RSS +{grown / 1e6:.1f} MB")
    assert await c.ask(b"still there", timeout=10) == b"still there"


async def test_the_tunnels_datagram_rate_and_the_listeners_client_cap_hold(stack: Stack) -> None:
    # 0.01/s: a burst of 1 and no refill during the test (one second's worth, at least one datagram).
    listener, echo = await stack.start_echo(listener={"tunnelDatagramRate": 0.01, "maxClients": 3})
    clients = [await stack.client(listener.port) for _ in range(4)]
    for i, c in enumerate(clients[:3]):
        for j in range(2):
            c.send(b"%d.%d" % (i, j))
    await until(lambda: echo.received == 1, 5, "the tunnel's one datagram")
    clients[3].send(b"a fourth client")
    reg = stack.edge.metrics.registry  # type: ignore[union-attr]
    await until(lambda: sample(reg, "mproxy_edge_udp_dropped_total", {"reason": "too_many_clients"}) == 1,
                5, "the fourth client to be dropped")
    assert sample(reg, "mproxy_edge_udp_dropped_total", {"reason": "tunnel_rate_limited"}) == 5
    assert len(listener.clients) == 3
    await asyncio.sleep(0.1)
    assert echo.received == 1


async def test_replies_for_a_paused_client_are_dropped_and_counted_by_the_sidecar(stack: Stack) -> None:
    """No backpressure for UDP: a client the edge paused gets its replies dropped at the sidecar (counted),
    not queued; once resumed, replies flow again."""
    listener, echo = await stack.start_echo()
    c = await stack.client(listener.port)
    assert await c.ask(b"before") == b"before"
    stream = next(iter(listener.clients.values())).stream
    assert stream is not None and stack.sidecar is not None
    reg = stack.sidecar.metrics.registry
    stream.pause_reading()  # as if the client could take no more
    sidecar_stream = next(s for t in stack.sidecar.tunnels if t.mux for s in t.mux.streams.values())
    await until(lambda: sidecar_stream.writing_paused, 5, "the sidecar to see the pause")
    for i in range(10):
        c.send(b"while paused %d" % i)
    await until(lambda: sample(reg, "mproxy_sidecar_udp_dropped_total", {"reason": "paused"}) == 10, 5,
                "ten replies dropped at the sidecar")
    assert echo.received == 11 and sidecar_stream.buffered == 0  # the backend answered; nothing was queued
    stream.resume_reading()
    await until(lambda: not sidecar_stream.writing_paused, 5, "the resume")
    assert await c.ask(b"after") == b"after"
    assert c.got.empty()
