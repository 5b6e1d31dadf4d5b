"""Harness for sidecar end-to-end tests: the node reference relay, real backends, a sidecar on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from tests.conftest import serve_app

from mproxy.config.sidecar import load_sidecar_config
from mproxy.sidecar.app import Sidecar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
RELAY_JS = REPO / "tests" / "interop" / "node" / "relay.js"

pytestmark = [pytest.mark.e2e, pytest.mark.interop]


async def serve_handler(handler: Callable[[web.Request], Any], path: str = "/",
                        ssl_context: Any = None) -> tuple[web.AppRunner, int]:
    """An aiohttp handler (a hand-written relay's WebSocket endpoint, an HTTP backend) on a free loopback
    port: returns the runner to clean up and the port."""
    app = web.Application()
    app.router.add_get(path, handler)
    return await serve_app(app, ssl_context)


class NodeRelay:
    """tests/interop/node/relay.js as a child process; JSON events on stdout, commands on stdin."""

    def __init__(self, node: str, config: dict[str, Any]) -> None:
        self.node = node
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.ws_port = 0
        self.ports: list[int] = []

    async def start(self) -> NodeRelay:
        self.proc = await asyncio.create_subprocess_exec(
            self.node, str(RELAY_JS), json.dumps(self.config),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.ensure_future(self._read())
        ready = await self.wait_event(lambda e: e["event"] == "ready")
        self.ws_port = ready["wsPort"]
        self.ports = [lst["port"] for lst in ready["listeners"]]
        # Keep the same ports across a restart.
        self.config = {**self.config, "wsPort": self.ws_port,
                       "listeners": [dict(lst) for lst in ready["listeners"]]}
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue
            self._new.set()

    async def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
                         start: int = 0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for e in self.events[start:]:
                    if pred(e):
                        return e
                self._new.clear()
                await self._new.wait()

    def mark(self) -> int:
        return len(self.events)

    async def command(self, **cmd: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def wait_tunnels(self, n: int = 1, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                mark = self.mark()
                await self.command(cmd="stats")
                stats = await self.wait_event(lambda e: e["event"] == "stats", start=mark)
                if stats["tunnels"] >= n:
                    return
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        self.proc = None


def relay_config(*listeners: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "wsPort": 0, "listeners": list(listeners), **extra}


RelayFactory = Callable[..., contextlib.AbstractAsyncContextManager[NodeRelay]]  # the node_relay fixture


@pytest.fixture
def node_relay(node_bin: str) -> RelayFactory:
    @contextlib.asynccontextmanager
    async def make(*listeners: dict[str, Any], **extra: Any) -> AsyncIterator[NodeRelay]:
        relay = NodeRelay(node_bin, relay_config(*listeners, **extra))
        await relay.start()
        try:
            yield relay
        finally:
            await relay.stop()

    return make


# -- backends -------------------------------------------------------------------------------------


class Backend:
    """A TCP server on loopback with a per-connection coroutine; counts connections."""

    def __init__(self, handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
                 ssl_ctx: Any = None) -> None:
        self.handle = handle
        self.ssl = ssl_ctx
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Backend:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handle(r, w)
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                pass
            finally:
                w.close()

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=self.ssl, limit=1 << 20)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    if w.can_write_eof():
        w.write_eof()


def tagged_echo(tag: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(tag + b":")
        await echo(r, w)

    return handle


BackendFactory = Callable[..., Awaitable[Backend]]  # the backends fixture: (handle=echo, ssl_ctx=None)


@pytest.fixture
async def backends() -> AsyncIterator[BackendFactory]:
    started: list[Backend] = []

    async def make(handle: Callable[..., Any] = echo, ssl_ctx: Any = None) -> Backend:
        b = await Backend(handle, ssl_ctx).start()
        started.append(b)
        return b

    yield make
    for b in started:
        await b.stop()


# -- the sidecar ----------------------------------------------------------------------------------


def sidecar_yaml(relay: NodeRelay, routes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "edge": {"urls": [f"ws://127.0.0.1:{relay.ws_port}/"], "tokenIn": "handshake"},
        "routes": routes,
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3},
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.5},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"format": "text", "level": "info"},
        "drainSeconds": 2,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def route(name: str, port: int, *, services: list[str] | None = None, ports: list[int] | None = None,
          hostnames: list[str] | None = None, **backend: Any) -> dict[str, Any]:
    match: dict[str, Any] = {}
    if services:
        match["services"] = services
    if ports:
        match["ports"] = ports
    if hostnames:
        match["hostnames"] = hostnames
    return {"name": name, "match": match, "backend": {"host": "127.0.0.1", "port": port, **backend}}


SidecarFactory = Callable[..., contextlib.AbstractAsyncContextManager[Sidecar]]  # the run_sidecar fixture


@pytest.fixture
def run_sidecar(tmp_path: Path) -> SidecarFactory:
    @contextlib.asynccontextmanager
    async def make(cfg: dict[str, Any], *, tunnels: int = 1, relay: NodeRelay | None = None,
                   reload_interval: float = 0.1,
                   prepare: Callable[[Sidecar], None] | None = None) -> AsyncIterator[Sidecar]:
        path = tmp_path / "sidecar.yaml"
        path.write_text(yaml.safe_dump(cfg))
        sidecar = Sidecar(load_sidecar_config(cfg), config_path=str(path), reload_interval=reload_interval)
        if prepare is not None:
            prepare(sidecar)
        await sidecar.start()
        try:
            if relay is not None:
                await relay.wait_tunnels(tunnels)
                async with asyncio.timeout(10):
                    while sum(t.connected for t in sidecar.tunnels) < tunnels:
                        await asyncio.sleep(0.02)
            yield sidecar
        finally:
            await sidecar.shutdown()

    return make


async def tcp_roundtrip(port: int, payload: bytes, *, expect: int | None = None, timeout: float = 5.0,
                        half_close: bool = True) -> bytes:
    """Connect to the relay's public port, send, half-close, read everything back.

    The relay may close or reset the client first (a refused stream), at any point of the write: the
    reset then comes out of drain() (ECONNRESET), or out of write_eof() (ENOTCONN: shutdown on a socket
    the peer reset before the loop read that reset). That is an answer, so the helper stops writing and
    returns what was read."""
    async with asyncio.timeout(timeout):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            w.write(payload)
            await w.drain()
            if half_close:
                w.write_eof()
        except OSError as exc:  # the relay closed first; anything else is a real failure
            if not isinstance(exc, ConnectionError) and exc.errno != errno.ENOTCONN:
                raise
        out = bytearray()
        while expect is None or len(out) < expect:
            try:
                chunk = await r.read(65536)
            except ConnectionError:  # the relay destroys a client whose stream got an error
                break
            if not chunk:
                break
            out += chunk
        w.close()
        return bytes(out)


def python_cmd() -> list[str]:
    return [sys.executable, "-m", "mproxy"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "sidecar") + os.pathsep + env.get("PYTHONPATH", "")
    return env
