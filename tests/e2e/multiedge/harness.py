"""Real parts for the multi-edge tests: `mproxy edge` processes on 127.0.0.2-4 (one tunnel port), a tiny
real DNS server (dnslib) that resolves one hostname to all of them, a tiny round-robin TCP balancer,
`mproxy sidecar` processes and an echo backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from dnslib import QTYPE, RR, A, DNSRecord
from tests.ports import free_port

from mproxy.demo.backends import echo
from mproxy.edge.auth import mint

SECRET = b"multi-edge-secret-0123456789"
PUBLIC_PORT = 7022
HOSTNAME = "edges.test"
EDGE_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SCALE_HOSTS = (*EDGE_HOSTS, "127.0.0.5", "127.0.0.6")  # room to scale out to 5 edges


class DnsServer(asyncio.DatagramProtocol):
    """Answers A queries for HOSTNAME with `self.addresses` (change it to scale), NXDOMAIN otherwise."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return
        answer = query.reply()
        name = str(query.q.qname).rstrip(".")
        if name != HOSTNAME:
            answer.header.rcode = 3
        elif query.q.qtype == QTYPE.A:
            for address in self.addresses:
                answer.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=1))
        assert self.transport is not None
        self.transport.sendto(answer.pack(), addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Balancer:
    """A TCP load balancer with one address. Skewed on purpose: each backend gets two new connections in
    a row before the next one's turn, so sidecars land on an edge they already hold."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self.turn = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.backends[(self.turn // 2) % len(self.backends)]
        self.turn += 1
        try:
            up_r, up_w = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        tasks = [asyncio.ensure_future(pipe(reader, up_w)), asyncio.ensure_future(pipe(up_r, writer))]
        for task in tasks:
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)
        await asyncio.gather(*tasks)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._pipes):
            task.cancel()


class Edge:
    def __init__(self, proc: asyncio.subprocess.Process, host: str, http_port: int, client_port: int,
                 edge_id: str, ports: dict[str, int] | None = None) -> None:
        self.proc, self.host, self.http_port, self.client_port, self.id = (proc, host, http_port, client_port,
                                                                          edge_id)
        self.ports = ports or {"tcp": client_port}  # listener kind -> port

    async def status(self) -> dict[str, Any]:
        return await get_json(f"http://{self.host}:{self.http_port}/status")

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://{self.host}:{self.http_port}/metrics") as resp:
            return await resp.text()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)


class Sidecar:
    def __init__(self, proc: asyncio.subprocess.Process, http_port: int) -> None:
        self.proc, self.http_port = proc, http_port

    async def status(self) -> dict[str, Any]:
        return await get_json(f"http://127.0.0.1:{self.http_port}/status")

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{self.http_port}/metrics") as resp:
            return await resp.text()


async def get_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return json.loads(await resp.text())  # type: ignore[no-any-return]


async def stop_proc(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class Cluster:
    """What one test starts; everything is stopped when the test ends (the `cluster` fixture)."""

    def __init__(self, tmp: Path, stack: contextlib.AsyncExitStack) -> None:
        self.tmp = tmp
        self.stack = stack
        self.tunnel_port = free_port(SCALE_HOSTS)
        self.edges: list[Edge] = []
        self.echo_port = 0
        (tmp / "secret").write_bytes(SECRET + b"\n")
        (tmp / "token").write_text(mint(SECRET, domains=[], ports=[PUBLIC_PORT]))

    async def echo(self) -> int:
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        self.stack.callback(server.close)
        self.echo_port = server.sockets[0].getsockname()[1]
        return self.echo_port

    async def dns(self, addresses: list[str]) -> DnsServer:
        server = DnsServer(addresses)
        await server.start()
        self.stack.callback(server.close)
        return server

    async def balancer(self, backends: list[tuple[str, int]]) -> Balancer:
        lb = Balancer(backends)
        await lb.start()
        self.stack.push_async_callback(lb.close)
        return lb

    async def edge(self, host: str, edge_id: str, replicas: int = 3,
                   tls: tuple[str, str] | None = None, peers: dict[str, Any] | None = None,
                   kinds: tuple[str, ...] = ()) -> Edge:
        """`peers`: the edge's peers section (forwarding); `kinds`: extra tls/http listeners."""
        http_port, client_port = free_port((host,)), free_port((host,))
        ports = {"tcp": client_port} | {kind: free_port((host,)) for kind in kinds}
        tunnel: dict[str, Any] = {"listen": f"{host}:{self.tunnel_port}", "path": "/tunnel"}
        if tls is not None:
            tunnel["tls"] = {"certFile": tls[0], "keyFile": tls[1]}
        cfg = {
            "id": edge_id,
            "replicas": replicas,
            "auth": {"secretFile": str(self.tmp / "secret")},
            "listeners": [{"kind": "tcp", "listen": f"{host}:{client_port}", "publicPort": PUBLIC_PORT}]
            + [{"kind": kind, "listen": f"{host}:{ports[kind]}"} for kind in kinds],
            "tunnel": tunnel,
            "http": {"listen": f"{host}:{http_port}"},
            "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3, "authTimeoutSeconds": 2},
            "limits": {"connectionRate": 100000, "connectionBurst": 100000, "maxStreamsPerClient": 10000},
            "logging": {"format": "text", "level": "warning"},
            "drainSeconds": 1,
        }
        if peers is not None:
            cfg["peers"] = peers
        path = self.tmp / f"edge-{edge_id}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = open(self.tmp / f"edge-{edge_id}.log", "ab")  # noqa: SIM115 (closed with the stack)
        self.stack.callback(log.close)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mproxy", "edge", "--config", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=log)
        self.stack.push_async_callback(stop_proc, proc)
        edge = Edge(proc, host, http_port, client_port, edge_id, ports)
        await until(lambda: _up(f"http://{host}:{http_port}/readyz"), 15, f"edge {edge_id} ready")
        self.edges.append(edge)
        return edge

    async def sidecar(self, label: str, url: str, nameservers: list[str] | None = None,
                      ca_file: str | None = None, routes: list[dict[str, Any]] | None = None,
                      token: str | None = None) -> Sidecar:
        """`routes` replace the echo route; `token` the default token (port PUBLIC_PORT only)."""
        http_port = free_port(("127.0.0.1",))
        token_file = self.tmp / "token"
        if token is not None:
            token_file = self.tmp / f"token-{label}"
            token_file.write_text(token)
        edge: dict[str, Any] = {"urls": [url], "connectionsPerUrl": 1, "tokenFile": str(token_file),
                                "resolveSeconds": 0.5}
        if ca_file:
            edge["caFile"] = ca_file
        if nameservers:
            edge["nameservers"] = nameservers
        cfg = {
            "edge": edge,
            "routes": routes or [{"name": "echo", "match": {"services": ["tcp"]},
                                  "backend": {"host": "127.0.0.1", "port": self.echo_port}}],
            "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.3, "fastWindowSeconds": 2},
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3},
            "logging": {"format": "text", "level": "warning"},
            "drainSeconds": 1,
        }
        path = self.tmp / f"sidecar-{label}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = open(self.tmp / f"sidecar-{label}.log", "wb")  # noqa: SIM115 (closed with the stack)
        self.stack.callback(log.close)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mproxy", "sidecar", "--config", str(path), "--no-reload",
            stdout=asyncio.subprocess.DEVNULL, stderr=log, env={**os.environ})
        self.stack.push_async_callback(stop_proc, proc)
        return Sidecar(proc, http_port)

    async def wait_tunnels(self, edges: list[Edge], per_edge: int, within: float = 15) -> None:
        async def done() -> bool:
            for edge in edges:
                if (await edge.status())["ports"].get(str(PUBLIC_PORT), 0) != per_edge:
                    return False
            return True

        await until(done, within, f"{per_edge} tunnels on each of {[e.id for e in edges]}")


async def _up(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def until(check: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def roundtrip(host: str, port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()

    async def receive() -> bytes:
        got = bytearray()
        while len(got) < len(payload):
            chunk = await reader.read(65536)
            if not chunk:
                break
            got += chunk
        return bytes(got)

    try:
        _, got = await asyncio.wait_for(asyncio.gather(send(), receive()), timeout)
        return got
    finally:
        writer.close()


async def spread_clients(edges: list[Edge], count: int, concurrency: int = 50) -> dict[str, int]:
    """`count` clients spread over `edges`, each a small echo round trip; returns failures by edge id."""
    gate = asyncio.Semaphore(concurrency)
    failed: dict[str, int] = {}

    async def one(i: int) -> None:
        edge = edges[i % len(edges)]
        payload = f"client {i} via {edge.id}\n".encode() * 4
        async with gate:
            try:
                ok = await roundtrip(edge.host, edge.client_port, payload) == payload
            except (OSError, TimeoutError):
                ok = False
        if not ok:
            failed[edge.id] = failed.get(edge.id, 0) + 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return failed
