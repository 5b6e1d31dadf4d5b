"""The ws/wss matrix: one TCP route through a tunnel, over plain ws or TLS (a test CA), between each pair of
peers that meet in production: mproxy edge + mproxy sidecar, mproxy edge + the node reference device
(tests/interop/node/device.js), the node reference relay (relay.js) + mproxy sidecar.

`system(pair, transport)` starts the three parts and yields a `System` whose `port` is the public TCP port
a client connects to. The backend answers "U" + an 8-byte length with the sha256 of that many bytes (upload)
and "D" with BLOB (download), then closes, so every transfer is checked end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import LOOPS, loop_policy
from tests.e2e.edge.harness import TCP_PUBLIC_PORT, start_edge, stop_proc, token

from mproxy.ca import CertificateAuthority
from mproxy.config.sidecar import load_sidecar_config
from mproxy.edge.relay import EdgeRelay
from mproxy.sidecar.app import Sidecar

HERE = Path(__file__).resolve().parent
NODE = HERE.parents[1] / "interop" / "node"

SIZE = 24 << 20
BLOB = os.urandom(SIZE)
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
# A stall: 24 MiB moved 7.1 MB in 60 s. Healthy runs take well under 2 s here (figures printed with -s).
BOUND = 20.0

PAIRS = ["edge+sidecar", "edge+device.js", "relay.js+sidecar"]
TRANSPORTS = ["ws", "wss"]


BACKEND_LOG: list[str] = []  # what the backend saw when a transfer went wrong (for failure messages)


async def transfer_backend(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                           stall: Callable[[], Awaitable[None]] | None = None) -> None:
    """With `stall`, an upload is not read past its length until `stall` returns (so the tunnel's flow
    control must hold the rest back meanwhile)."""
    mode = b""
    try:
        mode = await r.readexactly(1)
        if mode == b"U":
            # Length-prefixed, not "until EOF": telebit's device has no half-close (it drops what the
            # backend sends after the client's end).
            left = int.from_bytes(await r.readexactly(8), "big")
            if stall is not None:
                await stall()
            sha = hashlib.sha256()
            while left:
                chunk = await r.read(min(left, 1 << 16))
                if not chunk:
                    BACKEND_LOG.append(f"upload: EOF with {left} of {SIZE} bytes left")
                    return
                sha.update(chunk)
                left -= len(chunk)
            w.write(sha.hexdigest().encode())
            BACKEND_LOG.append("upload: digest sent")
        elif mode == b"D":
            view = memoryview(BLOB)
            for off in range(0, SIZE, 1 << 20):
                w.write(view[off: off + (1 << 20)])
                await w.drain()
        else:
            BACKEND_LOG.append(f"unknown mode {mode!r}")
        await w.drain()
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        BACKEND_LOG.append(f"mode {mode!r}: {exc!r}")
    finally:
        w.close()


async def upload(port: int) -> tuple[str, float]:
    """Send BLOB, read the backend's sha256 until it closes; returns (digest, seconds)."""
    started = time.monotonic()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(BOUND):
            w.write(b"U" + SIZE.to_bytes(8, "big"))
            view = memoryview(BLOB)
            for off in range(0, SIZE, 1 << 20):
                w.write(view[off: off + (1 << 20)])
                await w.drain()
            digest = (await r.read()).decode()
    finally:
        w.close()
    return digest, time.monotonic() - started


async def download(port: int, stall: Callable[[], Awaitable[None]] | None = None) -> tuple[str, int, float]:
    """Ask for BLOB and hash what arrives until EOF; returns (digest, bytes, seconds). With `stall`, read
    nothing until it returns (the tunnel's flow control must hold the rest back meanwhile)."""
    started = time.monotonic()
    sock = socket.socket()
    if stall is not None:
        # A small receive window, so the kernel cannot absorb the whole transfer while we do not read.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    r, w = await asyncio.open_connection(sock=sock, limit=1 << 16)
    sha, n = hashlib.sha256(), 0
    try:
        async with asyncio.timeout(BOUND):
            w.write(b"D")
            await w.drain()
            if stall is not None:
                await stall()
            while chunk := await r.read(1 << 16):
                sha.update(chunk)
                n += len(chunk)
    finally:
        w.close()
    return sha.hexdigest(), n, time.monotonic() - started


@pytest.fixture(params=LOOPS)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """The in-process roles on both loops they run on (uvloop in production, MPROXY_EVENT_LOOP=asyncio):
    their SSL transports are separate implementations."""
    return loop_policy(request.param)


@dataclass
class System:
    pair: str
    transport: str
    port: int = 0
    edge: EdgeRelay | None = None  # the mproxy edge, when the pair has one
    sidecar: Sidecar | None = None  # the mproxy sidecar, when the pair has one
    events: list[dict[str, Any]] = field(default_factory=list)  # device.js's, for failure messages
    upload_stall: Callable[[], Awaitable[None]] | None = None  # see transfer_backend

    def odd_events(self) -> list[dict[str, Any]]:
        """device.js events a clean transfer does not produce."""
        return [e for e in self.events if e.get("event") not in ("connection", "control", "ready", "open")]

    def pauses(self) -> tuple[int, int]:
        """(pauses mproxy sent, pauses it received) on the tunnel, from whichever mproxy role is here."""
        if self.edge is not None:
            muxes = [s.mux for s in self.edge.sessions]
        else:
            assert self.sidecar is not None
            muxes = [t.mux for t in self.sidecar.tunnels]
        return (sum(m.pauses_sent for m in muxes if m is not None),
                sum(m.pauses_received for m in muxes if m is not None))


class Tls:
    """The test CA and a server certificate for localhost (files on disk for node and the edge config)."""

    def __init__(self, tmp: Path) -> None:
        self.ca = CertificateAuthority.create("wss matrix CA")
        self.ca_file = str(self.ca.write_cert(tmp / "ca.crt"))
        cert, key = self.ca.issue(["localhost"]).write(tmp, "tunnel")
        self.cert_file, self.key_file = str(cert), str(key)


async def _backend(system: System | None = None) -> asyncio.Server:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await transfer_backend(r, w, system.upload_stall if system is not None else None)

    return await asyncio.start_server(serve, "127.0.0.1", 0, limit=1 << 20)


@contextlib.asynccontextmanager
async def _sidecar(tmp: Path, url: str, tls: Tls | None, tok: str | None, backend_port: int,
                   route_port: int) -> AsyncIterator[Sidecar]:
    edge: dict[str, Any] = {"urls": [url]}
    if tls is not None:
        edge["caFile"] = tls.ca_file
    if tok is not None:
        token_file = tmp / "token"
        token_file.write_text(tok)
        edge["tokenFile"] = str(token_file)
    cfg = load_sidecar_config({
        "edge": edge,
        "routes": [{"name": "transfer", "match": {"ports": [route_port]},
                    "backend": {"host": "127.0.0.1", "port": backend_port}}],
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.5},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"format": "text", "level": "warning"},
        "drainSeconds": 0.2,
    })
    sidecar = Sidecar(cfg, config_path=None)
    await sidecar.start()
    try:
        async with asyncio.timeout(10):
            while not sidecar.tunnels[0].connected:
                await asyncio.sleep(0.02)
        yield sidecar
    finally:
        await sidecar.shutdown()


async def _read_json_until(proc: asyncio.subprocess.Process, event: str,
                           timeout: float = 10) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = await proc.stdout.readline()
            if not line:
                err = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"node exited before {event!r}: {err.decode()[-2000:]}")
            item: dict[str, Any] = json.loads(line)
            if item.get("event") == event:
                return item


async def _drain_stdout(proc: asyncio.subprocess.Process, into: list[dict[str, Any]] | None = None) -> None:
    """Keep reading a child's stdout (JSON lines) so a chatty child never blocks on a full pipe."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        if into is not None and len(into) < 1000:
            into.append(json.loads(line))


@pytest.fixture
def system(tmp_path: Path,
           node_bin: str) -> Callable[[str, str], contextlib.AbstractAsyncContextManager[System]]:
    @contextlib.asynccontextmanager
    async def make(pair: str, transport: str) -> AsyncIterator[System]:
        tls = Tls(tmp_path) if transport == "wss" else None
        scheme = "wss" if tls else "ws"
        out = System(pair, transport)
        async with contextlib.AsyncExitStack() as stack:
            backend = await _backend(out)
            stack.callback(backend.close)
            backend_port = backend.sockets[0].getsockname()[1]
            if pair.startswith("edge+"):
                overrides: dict[str, Any] = {
                    "listeners": [{"kind": "tcp", "listen": "127.0.0.1:0", "publicPort": TCP_PUBLIC_PORT}],
                }
                if tls:
                    overrides["tunnel"] = {"tls": {"certFile": tls.cert_file, "keyFile": tls.key_file}}
                relay = out.edge = await start_edge(tmp_path, **overrides)
                stack.push_async_callback(relay.close)
                url = f"{scheme}://localhost:{relay.tunnel_port}/tunnel"
                out.port = relay.listeners[0].port
                tok = token([], [TCP_PUBLIC_PORT])
                if pair == "edge+sidecar":
                    await stack.enter_async_context(
                        _sidecar(tmp_path, url, tls, tok, backend_port, TCP_PUBLIC_PORT))
                else:
                    args = ["--url", url, "--token", tok, "--port", f"{TCP_PUBLIC_PORT}={backend_port}"]
                    if tls:
                        args += ["--ca", tls.ca_file]
                    proc = await asyncio.create_subprocess_exec(
                        node_bin, str(NODE / "device.js"), *args,
                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                    stack.push_async_callback(stop_proc, proc)
                    await _read_json_until(proc, "ready")
                    drain = asyncio.ensure_future(_drain_stdout(proc, out.events))
                    stack.callback(drain.cancel)
                async with asyncio.timeout(10):
                    while not relay.table.ports():
                        await asyncio.sleep(0.02)
            else:  # relay.js + sidecar
                serviceport = 7022
                conf: dict[str, Any] = {"host": "127.0.0.1", "wsPort": 0, "listeners": [
                    {"port": 0, "service": "tcp", "serviceport": serviceport, "name": ""}]}
                if tls:
                    conf["tls"] = {"cert": tls.cert_file, "key": tls.key_file}
                proc = await asyncio.create_subprocess_exec(
                    node_bin, str(NODE / "relay.js"), json.dumps(conf), cwd=str(NODE),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE)
                stack.push_async_callback(stop_proc, proc)
                ready = await _read_json_until(proc, "ready")
                drain = asyncio.ensure_future(_drain_stdout(proc))
                stack.callback(drain.cancel)
                out.port = ready["listeners"][0]["port"]
                url = f"{scheme}://localhost:{ready['wsPort']}/"
                out.sidecar = await stack.enter_async_context(
                    _sidecar(tmp_path, url, tls, None, backend_port, serviceport))
            yield out

    return make
