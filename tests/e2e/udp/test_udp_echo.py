"""UDP through edge and sidecar with a UDP echo backend: datagram boundaries, many clients, the size limit,
idle expiry, a backend that is down, a route that does not exist, IPv6 clients."""

from __future__ import annotations

import asyncio
import os

import pytest

from mproxy.config.edge import MAX_UDP_PAYLOAD
from mproxy.edge.udp import _Client

from .harness import Stack, free_udp_port, route, sample, until

pytestmark = pytest.mark.e2e


async def test_every_size_from_1_byte_to_the_maximum_keeps_its_boundary_and_bytes(stack: Stack) -> None:
    listener, echo = await stack.start_echo()
    c = await stack.client(listener.port)
    sizes = [1, 2, 3, 100, 511, 512, 1472, 1473, 4096, 9000, 32768, 65000, MAX_UDP_PAYLOAD]
    for size in sizes:  # one at a time: each reply must be exactly its own datagram
        payload = os.urandom(size)
        assert await c.ask(payload) == payload, size
    # Now all at once, in flight together: still one datagram each, none merged or split.
    payloads = [os.urandom(size) for size in sizes]
    for p in payloads:
        c.send(p)
    got = [await c.recv() for _ in payloads]
    assert sorted(got) == sorted(payloads)
    assert echo.received == 2 * len(sizes)
    reg = stack.edge.metrics.registry  # type: ignore[union-attr]
    labels = {"port": "5353", "direction": "in"}
    assert sample(reg, "mproxy_edge_udp_datagrams_total", labels) == 2 * len(sizes)
    assert sample(reg, "mproxy_edge_udp_bytes_total", labels) == 2 * sum(sizes)


async def test_200_concurrent_clients_each_get_their_own_replies(stack: Stack) -> None:
    listener, _ = await stack.start_echo()
    clients = [await stack.client(listener.port) for _ in range(200)]

    async def talk(i: int) -> None:
        for j in range(3):
            payload = f"client {i} datagram {j} ".encode() * (1 + i % 7)
            assert await clients[i].ask(payload, timeout=10) == payload

    await asyncio.gather(*(talk(i) for i in range(200)))
    assert len(listener.clients) == 200
    assert stack.sidecar_streams() == 200


async def test_a_datagram_over_the_maximum_is_dropped_and_counted_never_split(stack: Stack) -> None:
    listener, echo = await stack.start_echo(listener={"maxDatagramBytes": 1000})
    c = await stack.client(listener.port)
    reg = stack.edge.metrics.registry  # type: ignore[union-attr]
    assert await c.ask(b"a" * 1000) == b"a" * 1000
    c.send(b"b" * 1001)
    assert await c.ask(b"after") == b"after"  # in order: the 1001-byte one never went anywhere
    assert c.got.empty()
    assert echo.received == 2
    assert sample(reg, "mproxy_edge_udp_dropped_total", {"reason": "oversize"}) == 1


async def test_an_idle_client_is_ended_and_its_next_datagram_opens_a_new_stream(stack: Stack) -> None:
    listener, _ = await stack.start_echo(listener={"idleTimeoutSeconds": 1.5})
    c = await stack.client(listener.port)
    assert await c.ask(b"one") == b"one"
    assert len(listener.clients) == 1
    first = stack.edge.sessions and next(iter(stack.edge.sessions)).mux  # type: ignore[union-attr]
    assert first
    opened = first.streams_opened
    # The edge keeps the stream until the sidecar's `end` is back (so the next one cannot overlap it).
    await until(lambda: not listener.clients and stack.sidecar_streams() == 0 and not first.streams, 10,
                "the idle client to end")
    assert not first.streams  # the edge sent `end` and forgot it; the sidecar closed its backend socket
    assert await c.ask(b"two") == b"two"
    assert first.streams_opened == opened + 1


async def test_a_backend_that_is_down_ends_the_stream_with_econnrefused_the_tunnel_carries_on(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[str] = []
    monkeypatch.setattr(_Client, "error_received", lambda self, message, code: codes.append(code))
    listener = await stack.start([route(free_udp_port(), "down")])
    c = await stack.client(listener.port)
    session = next(iter(stack.edge.sessions))  # type: ignore[union-attr]
    mux = session.mux
    assert mux is not None
    c.send(b"anyone?")
    await until(lambda: codes == ["ECONNREFUSED"], 5, "the sidecar's ECONNREFUSED")
    await until(lambda: not listener.clients and stack.sidecar_streams() == 0, 5, "the stream to end")
    c.send(b"anyone now?")  # a new stream on the same tunnel, refused the same way
    await until(lambda: codes == ["ECONNREFUSED"] * 2, 5, "the second ECONNREFUSED")
    assert not mux.closed and mux.streams_opened == 2 and session.mux is mux


async def test_a_udp_client_with_no_udp_route_is_refused_with_e_no_route(stack: Stack) -> None:
    _, port = await stack.echo()
    tcp_only = {"name": "tcp", "match": {"ports": [5353]}, "backend": {"host": "127.0.0.1", "port": port}}
    listener = await stack.start([tcp_only])
    c = await stack.client(listener.port)
    c.send(b"hello")
    await until(lambda: stack.sidecar.metrics.registry.get_sample_value(  # type: ignore[union-attr]
        "mproxy_sidecar_streams_refused_total", {"reason": "no_route"}) == 1, 5, "the refusal")
    await until(lambda: not listener.clients, 5, "the edge to forget the refused client")
    assert c.got.empty()


async def test_ipv6_clients(stack: Stack) -> None:
    listener, _ = await stack.start_echo(listener={"listen": "[::1]:0"})
    clients = [await stack.client(listener.port, "::1") for _ in range(5)]
    for i, c in enumerate(clients):
        assert await c.ask(f"v6 {i}".encode()) == f"v6 {i}".encode()
    ids = sorted(k for k in listener.clients)
    assert all(host == "::1" for host, _ in ids) and len(ids) == 5


async def test_the_sidecars_idle_timer_ends_the_client_at_the_edge_too(stack: Stack) -> None:
    listener, _ = await stack.start_echo(listener={"idleTimeoutSeconds": 60},
                                         sidecar_limits={"udpIdleTimeoutSeconds": 0.5})
    c = await stack.client(listener.port)
    assert await c.ask(b"one") == b"one"
    await until(lambda: not listener.clients and stack.sidecar_streams() == 0, 5, "the sidecar's `end`")
    assert await c.ask(b"two") == b"two"  # a new stream
