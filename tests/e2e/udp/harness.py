"""Real parts for the UDP tests: an in-process edge with a udp listener, an in-process sidecar with udp
routes, a UDP echo backend and UDP clients, all on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, cast

from tests.ports import free_port

from mproxy.config.edge import load_edge_config
from mproxy.config.sidecar import load_sidecar_config
from mproxy.edge.auth import mint
from mproxy.edge.relay import EdgeRelay
from mproxy.edge.udp import UdpListener
from mproxy.sidecar.app import Sidecar

SECRET = b"e2e-udp-secret-0123456789"
PUBLIC_PORT = 5353
LIMITS = {"maxStreamsPerClient": 5000, "connectionRate": 100000, "connectionBurst": 100000,
          "maxStreamsPerTunnel": 5000}


class Echo(asyncio.DatagramProtocol):
    """Sends every datagram back as it came."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # _SelectorDatagramTransport is none

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def udp_echo(host: str = "127.0.0.1") -> tuple[asyncio.DatagramTransport, Echo, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Echo, local_addr=(host, 0))
    return transport, proto, transport.get_extra_info("sockname")[1]


def free_udp_port() -> int:
    """A port free on 127.0.0.1 for UDP and TCP both (dnsmasq takes both): nothing listens there, so
    datagrams to it get ICMP port unreachable."""
    return free_port(udp=True)


class Client(asyncio.DatagramProtocol):
    """A UDP client socket with a queue of what it received (bounded by the test's own sends)."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # _SelectorDatagramTransport is none

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.got.get(), timeout)

    async def ask(self, data: bytes, timeout: float = 5.0) -> bytes:
        self.send(data)
        return await self.recv(timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def client(port: int, host: str = "127.0.0.1") -> Client:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(Client, remote_addr=(host, port))
    return proto


def route(port: int, name: str = "echo") -> dict[str, Any]:
    """The sidecar route of the public UDP port to a backend on 127.0.0.1:`port`."""
    return {"name": name, "match": {"services": ["udp"], "ports": [PUBLIC_PORT]},
            "backend": {"host": "127.0.0.1", "port": port}}


class Stack:
    """One edge and one sidecar joined by a tunnel; everything closed by `close()`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.edge: EdgeRelay | None = None
        self.sidecar: Sidecar | None = None
        self.closers: list[Any] = []

    async def start(self, routes: list[dict[str, Any]], *, listener: dict[str, Any] | None = None,
                    ports: list[int] | None = None, sidecar_limits: dict[str, Any] | None = None,
                    edge_limits: dict[str, Any] | None = None, drain: float = 1) -> UdpListener:
        secret = self.tmp / "secret"
        secret.write_bytes(SECRET)
        lst = {"kind": "udp", "listen": "127.0.0.1:0", "publicPort": PUBLIC_PORT, **(listener or {})}
        cfg = {"auth": {"secretFile": str(secret)}, "listeners": [lst],
               "tunnel": {"listen": "127.0.0.1:0", "path": "/tunnel"}, "http": {"listen": "127.0.0.1:0"},
               "limits": {**LIMITS, **(edge_limits or {})}, "drainSeconds": drain}
        self.edge = EdgeRelay(load_edge_config(cfg), SECRET)
        await self.edge.start()
        token = self.tmp / "token"
        token.write_text(mint(SECRET, domains=[], ports=ports or [PUBLIC_PORT]))
        scfg = {
            "edge": {"urls": [f"ws://127.0.0.1:{self.edge.tunnel_port}/tunnel"], "tokenFile": str(token),
                     "tokenIn": "handshake"},
            "routes": routes,
            "limits": {"maxStreamsPerTunnel": 5000, "maxStreamsPerClient": 5000, **(sidecar_limits or {})},
            "http": {"listen": "127.0.0.1:0"},
            "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3},
            "drainSeconds": drain,
        }
        self.sidecar = Sidecar(load_sidecar_config(scfg), serve_http=False)
        await self.sidecar.start()
        if ports is None or PUBLIC_PORT in ports:
            await self.wait_tunnel()
        else:
            await self.wait_tunnels(1)
        listener_ = self.edge.listeners[0]
        assert isinstance(listener_, UdpListener)
        return listener_

    async def echo(self) -> tuple[Echo, int]:
        """A UDP echo backend on 127.0.0.1, closed with the stack: it and its port."""
        transport, echo, port = await udp_echo()
        self.closers.append(transport.close)
        return echo, port

    async def start_echo(self, **start: Any) -> tuple[UdpListener, Echo]:
        """start() with one route to a new echo backend (`start` is start()'s keyword arguments)."""
        echo, port = await self.echo()
        return await self.start([route(port)], **start), echo

    async def client(self, port: int, host: str = "127.0.0.1") -> Client:
        """A UDP client of `port`, closed with the stack."""
        c = await client(port, host)
        self.closers.append(c.close)
        return c

    async def wait_tunnel(self, within: float = 10.0) -> None:
        assert self.edge is not None
        deadline = time.monotonic() + within
        while not self.edge.table.tunnels_for_port(PUBLIC_PORT):
            assert time.monotonic() < deadline, "the sidecar's tunnel never registered its port"
            await asyncio.sleep(0.02)

    async def wait_tunnels(self, n: int, within: float = 10.0) -> None:
        assert self.edge is not None
        deadline = time.monotonic() + within
        while len(self.edge.sessions) < n or not all(s.mux for s in self.edge.sessions):
            assert time.monotonic() < deadline, f"fewer than {n} tunnels connected"
            await asyncio.sleep(0.02)

    def sidecar_streams(self) -> int:
        assert self.sidecar is not None
        return sum(len(t.mux.streams) for t in self.sidecar.tunnels if t.mux is not None)

    async def close(self) -> None:
        for close in reversed(self.closers):
            close()
        if self.sidecar is not None:
            with contextlib.suppress(Exception):
                await self.sidecar.shutdown()
        if self.edge is not None:
            await self.edge.close()


def sample(registry: Any, name: str, labels: dict[str, str]) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def until(check: Any, within: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
