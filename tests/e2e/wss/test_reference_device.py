"""The mproxy edge against device.js where it behaves like telebit 0.20.8 (issue 11), over ws and wss:
a pause without a body crashes it, and data in the same WebSocket message as its `connection` frame
makes it connect to the local service twice."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.edge.harness import TCP_PUBLIC_PORT, ports, start_edge, stop_proc, token

from mproxy.edge.relay import EdgeRelay

from .conftest import BLOB_SHA, NODE, SIZE, TRANSPORTS, Tls, _backend, _read_json_until

pytestmark = [pytest.mark.e2e, pytest.mark.interop]


class Device:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.events.append(json.loads(line))

    def count(self, event: str) -> int:
        return sum(e.get("event") == event for e in self.events)


@contextlib.asynccontextmanager
async def edge_with_device(tmp: Path, node: str, transport: str, device_args: list[str],
                           **edge: Any) -> AsyncIterator[tuple[EdgeRelay, Device]]:
    tls = Tls(tmp) if transport == "wss" else None
    if tls:
        edge["tunnel"] = {"tls": {"certFile": tls.cert_file, "keyFile": tls.key_file}}
    relay = await start_edge(tmp, **edge)
    scheme = "wss" if tls else "ws"
    args = ["--url", f"{scheme}://localhost:{relay.tunnel_port}/tunnel", *device_args]
    if tls:
        args += ["--ca", tls.ca_file]
    proc = await asyncio.create_subprocess_exec(
        node, str(NODE / "device.js"), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await _read_json_until(proc, "ready")
        dev = Device(proc)
        yield relay, dev
    finally:
        await stop_proc(proc)
        await relay.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_first_data_never_shares_a_message_with_its_connection(tmp_path: Path, node_bin: str,
                                                                     transport: str) -> None:
    """HTTP: the edge has the request (sniffed for Host) when it opens the stream. Sent in the connection's
    message, device.js (like telebit) opened a second local connection per request."""
    connections = 0

    async def http(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await w.drain()
        w.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        args = ["--token", token(["app.test"]), "--name", f"app.test={port}"]
        async with edge_with_device(tmp_path, node_bin, transport, args) as (relay, dev):
            for _ in range(5):
                r, w = await asyncio.open_connection("127.0.0.1", ports(relay)["http"])
                w.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
                async with asyncio.timeout(10):
                    reply = await r.read()
                w.close()
                assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"ok")
            await asyncio.sleep(0.2)  # a late duplicate connect would show up by now
            assert dev.count("no_connection_event") == 0, dev.events
            assert (dev.count("connection"), connections) == (5, 5)
    finally:
        server.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_slow_client_pauses_the_device_without_killing_it(tmp_path: Path, node_bin: str,
                                                                  transport: str) -> None:
    """A client that stops reading makes the edge pause its stream at device.js; a pause without a body
    made it throw (TypeError in data.toString()) and exit, like telebit's device."""
    backend = await _backend()
    bport = backend.sockets[0].getsockname()[1]
    try:
        async with edge_with_device(
            tmp_path, node_bin, transport,
            ["--token", token([], [TCP_PUBLIC_PORT]), "--port", f"{TCP_PUBLIC_PORT}={bport}"],
            listeners=[{"kind": "tcp", "listen": "127.0.0.1:0", "publicPort": TCP_PUBLIC_PORT}],
            limits={"streamBufferBytes": 65536},
        ) as (relay, dev):
            r, w = await asyncio.open_connection("127.0.0.1", ports(relay)["tcp"], limit=1 << 16)
            w.write(b"D")
            session = next(iter(relay.sessions))
            async with asyncio.timeout(10):
                while not (session.mux is not None and session.mux.pauses_sent):
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # a crash on that pause would be visible by now
            sha, n = hashlib.sha256(), 0
            async with asyncio.timeout(20):
                while chunk := await r.read(1 << 16):
                    sha.update(chunk)
                    n += len(chunk)
            w.close()
            assert dev.proc.returncode is None, await dev.proc.stderr.read()  # type: ignore[union-attr]
            assert (n, sha.hexdigest()) == (SIZE, BLOB_SHA)
            paused = [e for e in dev.events if e.get("event") == "paused"]
            assert paused and paused[0]["received"].isdigit(), dev.events
            assert paused[0]["serviceport"] == str(TCP_PUBLIC_PORT)
            assert dev.count("resumed") >= 1
    finally:
        backend.close()
