"""The edge's stream limits hold for UDP clients as for TCP ones, and a client they refuse is dropped and
counted by reason (UDP has no way to answer it), while the clients already in keep their streams."""

from __future__ import annotations

import asyncio
import socket

import pytest

from .harness import PUBLIC_PORT, Stack, sample, until

pytestmark = pytest.mark.e2e


async def clients_until_refused(stack: Stack, port: int, allowed: int, reason: str,
                                host: str = "127.0.0.1") -> None:
    """`allowed` clients get echoes; the next one's datagram is dropped as `reason`; the first still work."""
    reg = stack.edge.metrics.registry  # type: ignore[union-attr]
    clients = [await stack.client(port, host) for _ in range(allowed + 1)]
    for i, c in enumerate(clients[:allowed]):
        assert await c.ask(b"in %d" % i) == b"in %d" % i
    clients[-1].send(b"one too many")
    await until(lambda: sample(reg, "mproxy_edge_udp_dropped_total", {"reason": reason}) == 1, 5,
                f"the last client to be dropped as {reason}")
    for i, c in enumerate(clients[:allowed]):
        assert await c.ask(b"still %d" % i) == b"still %d" % i
    await asyncio.sleep(0.1)
    assert clients[-1].got.empty()


async def test_streams_per_tunnel_caps_udp_clients_as_tunnel_full(stack: Stack) -> None:
    listener, _ = await stack.start_echo(edge_limits={"maxStreamsPerTunnel": 3})
    await clients_until_refused(stack, listener.port, 3, "tunnel_full")


async def test_connections_per_client_caps_udp_clients_of_one_address(stack: Stack) -> None:
    listener, _ = await stack.start_echo(edge_limits={"maxStreamsPerClient": 2})
    await clients_until_refused(stack, listener.port, 2, "client_limit")


async def test_a_port_no_token_grants_drops_its_clients_as_no_tunnel(stack: Stack) -> None:
    listener, echo = await stack.start_echo(ports=[PUBLIC_PORT + 1])  # the tunnel serves another port
    reg = stack.edge.metrics.registry  # type: ignore[union-attr]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"anyone?", ("127.0.0.1", listener.port))
        await until(lambda: sample(reg, "mproxy_edge_udp_dropped_total", {"reason": "no_tunnel"}) == 1, 5,
                    "the datagram to be dropped as no_tunnel")
    assert not listener.clients and echo.received == 0
