"""Real parts for the edge tests: an in-process edge, sample backends and a minimal tunnel client.

The tunnel client (`Device`) is built from the tunnel core (Multiplexer + run_tunnel over an aiohttp
client WebSocket) and forwards each stream to a local port, the way a sidecar does; `device.js` (node,
proxy-packer) is the reference-codec equivalent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from tests.conftest import serve_app

from mproxy.aiohttp_compat import transport_of
from mproxy.ca import CertificateAuthority
from mproxy.config.edge import load_edge_config
from mproxy.demo.backends import echo
from mproxy.edge.auth import mint
from mproxy.edge.relay import EdgeRelay
from mproxy.tunnel.mux import Multiplexer, MuxLimits, Stream, StreamEnd, StreamHandler
from mproxy.tunnel.ws import Heartbeat, run_tunnel

SECRET = b"e2e-edge-secret-0123456789"
TCP_PUBLIC_PORT = 7022


async def start_edge(tmp: Path, **overrides: Any) -> EdgeRelay:
    secret_file = tmp / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    cfg: dict[str, Any] = {
        "auth": {"secretFile": str(secret_file)},
        "listeners": [
            {"kind": "tls", "listen": "127.0.0.1:0"},
            {"kind": "http", "listen": "127.0.0.1:0"},
            {"kind": "tcp", "listen": "127.0.0.1:0", "publicPort": TCP_PUBLIC_PORT},
        ],
        "tunnel": {"listen": "127.0.0.1:0", "path": "/tunnel"},
        "http": {"listen": "127.0.0.1:0"},
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3, "authTimeoutSeconds": 1},
        "drainSeconds": 2,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    relay = EdgeRelay(load_edge_config(cfg), SECRET)
    await relay.start()
    return relay


class Parts:
    """The parts one test starts, each closed when the test ends, newest first (the `parts` fixture)."""

    def __init__(self, tmp: Path, stack: contextlib.AsyncExitStack) -> None:
        self.tmp = tmp
        self.stack = stack

    async def edge(self, **overrides: Any) -> EdgeRelay:
        relay = await start_edge(self.tmp, **overrides)
        self.stack.push_async_callback(relay.close)
        return relay

    async def backends(self, names: list[str], label: str = "A",
                       ca: CertificateAuthority | None = None) -> Backends:
        back = await start_backends(self.tmp, names, label, ca)
        self.stack.push_async_callback(back.close)
        return back

    def device(self, url: str, tok: str | None, **kw: Any) -> Device:
        dev = Device(url, tok, **kw)
        self.stack.push_async_callback(dev.close)
        return dev

    async def two_replicas(self, relay: EdgeRelay) -> tuple[Backends, Backends, Device, Device]:
        """Backends "A" and "B" (one CA) behind one started device each, both serving app.test (TLS) and
        web.app.test (HTTP) with one token: two replicas of a service behind `relay`."""
        back_a = await self.backends(["app.test"], label="A")
        back_b = await self.backends(["app.test"], label="B", ca=back_a.ca)
        tok = token(["app.test"])
        devs = [self.device(tunnel_url(relay), tok,
                            names={"app.test": b.https_port, "web.app.test": b.http_port})
                for b in (back_a, back_b)]
        for dev in devs:
            await dev.start()
        return back_a, back_b, devs[0], devs[1]

    def later(self, close: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Await `close(*args)` when the test ends (a process, a reference device)."""
        self.stack.push_async_callback(close, *args)


async def stop_proc(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (a clean drain), then SIGKILL after 10 s; nothing if it already exited."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def sidecar_process(parts: Parts, label: str, url: str, tok: str, routes: list[dict[str, Any]],
                          **edge: Any) -> asyncio.subprocess.Process:
    """Run `mproxy sidecar` with `routes` (and `edge` keys beside urls and the token), stopped (SIGTERM,
    then SIGKILL) when the test ends; its stderr is a pipe the test may read."""
    token_file = parts.tmp / f"token-{label}"
    token_file.write_text(tok)
    cfg = {
        "edge": {"urls": [url], "tokenFile": str(token_file), "tokenIn": "handshake", **edge},
        "routes": routes,
        "http": {"listen": "127.0.0.1:0"},
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 3},
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.5},
        "logging": {"format": "text", "level": "warning"},
        "drainSeconds": 1,
    }
    path = parts.tmp / f"sidecar-{label}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mproxy", "sidecar", "--config", str(path), "--no-reload",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    parts.later(stop_proc, proc)
    return proc


async def tagged_echo(parts: Parts, tag: bytes) -> tuple[int, list[int]]:
    """A TCP server answering `tag:` then an echo; (its port, a one-item list counting its connections)."""
    seen = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen[0] += 1
        try:
            writer.write(tag + b":")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)

    async def close() -> None:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)

    parts.later(close)
    return server.sockets[0].getsockname()[1], seen


def ports(relay: EdgeRelay) -> dict[str, int]:
    return {item.config.kind: item.port for item in relay.listeners}


def tunnel_url(relay: EdgeRelay) -> str:
    return f"ws://127.0.0.1:{relay.tunnel_port}/tunnel"


def token(domains: list[str] | None = None, ports_: list[int] | None = None, **kw: Any) -> str:
    return mint(kw.pop("secret", SECRET), domains=domains or [], ports=ports_ or [], **kw)


# -- backends ------------------------------------------------------------------------------------------

@dataclass
class Backends:
    ca: CertificateAuthority
    https_port: int
    http_port: int
    echo_port: int
    servers: list[Any] = field(default_factory=list)
    label: str = "A"

    async def close(self) -> None:
        for server in self.servers:
            if isinstance(server, web.AppRunner):
                await server.cleanup()
            else:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 1)


async def start_backends(tmp: Path, names: list[str], label: str = "A",
                         ca: CertificateAuthority | None = None) -> Backends:
    ca = ca or CertificateAuthority.create("e2e CA")
    leaf = ca.issue(names)
    ctx = leaf.server_context(tmp, f"backend-{label}")

    async def https_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(f"{label}:".encode() + data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    https = await asyncio.start_server(https_handler, "127.0.0.1", 0, ssl=ctx)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {label} host={request.host} path={request.path}")

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "1048576"))
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            part = chunk[: min(65536, size - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "2")))
        return web.Response(text=f"slow {label}")

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    runner, http_port = await serve_app(app)

    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return Backends(ca, https.sockets[0].getsockname()[1], http_port, echo_server.sockets[0].getsockname()[1],
                    [https, runner, echo_server], label)


# -- a minimal tunnel client on the tunnel core ------------------------------------------------------------

class Forward(StreamHandler):
    """Join a stream to a new local TCP connection (what a sidecar does for each client)."""

    def __init__(self, stream: Stream, port: int) -> None:
        self.stream = stream
        self.pending: list[bytes] = []
        self.writer: asyncio.StreamWriter | None = None
        self.eof = False
        self.may_read = asyncio.Event()
        self.may_read.set()
        self.task = asyncio.ensure_future(self._run(port))

    async def _run(self, port: int) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            self.stream.abort(f"connect failed: {exc}", "ECONNREFUSED")
            return
        self.writer = writer
        for data in self.pending:
            writer.write(data)
        if self.eof and writer.can_write_eof():
            writer.write_eof()
        self.pending.clear()
        try:
            while not self.stream.closed:
                await self.may_read.wait()
                data = await reader.read(65536)
                if not data:
                    self.stream.write_eof()
                    break
                self.stream.write(data)
        except (ConnectionError, OSError):
            self.stream.abort("backend failed", "E_BACKEND")

    def data_received(self, data: bytes) -> None:
        if self.writer is None:
            self.pending.append(data)
        elif not self.writer.is_closing():
            self.writer.write(data)

    def eof_received(self) -> None:
        self.eof = True
        if self.writer is not None and self.writer.can_write_eof() and not self.writer.is_closing():
            self.writer.write_eof()

    def pause_writing(self) -> None:
        self.may_read.clear()

    def resume_writing(self) -> None:
        self.may_read.set()

    def stream_closed(self, end: StreamEnd) -> None:
        self.may_read.set()
        if self.writer is not None:
            self.writer.close()
        elif not self.task.done():
            self.task.cancel()


class Device:
    """Dial the edge, authenticate, and forward streams: names -> local port, tcp ports -> local port."""

    def __init__(self, url: str, tok: str | None, *, names: dict[str, int] | None = None,
                 tcp: dict[int, int] | None = None, token_in: str = "handshake",
                 on_stream: Callable[[Stream], None] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.url = url
        self.token = tok
        self.names = names or {}
        self.tcp = tcp or {}
        self.token_in = token_in
        self.controls: list[Any] = []
        self.ready = asyncio.Event()
        self.streams_seen = 0
        self.on_stream = on_stream
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.mux: Multiplexer | None = None
        self.task: asyncio.Task[Any] | None = None
        self.result: Any = None
        self.stop = asyncio.Event()

    def _accept(self, stream: Stream) -> StreamHandler:
        self.streams_seen += 1
        if self.on_stream:
            self.on_stream(stream)
        port = self.names.get(stream.name) if stream.name else None
        if port is None:
            port = self.tcp.get(int(stream.serviceport or 0))
        if port is None:
            stream.abort("no local service", "E_NO_SERVICE")
            return StreamHandler()
        return Forward(stream, port)

    def _on_control(self, value: object) -> None:
        self.controls.append(value)
        assert self.mux is not None
        if isinstance(value, list) and len(value) > 1 and value[1] == "hello":
            if self.token_in == "handshake" and self.token:
                self.mux.send_control([7, "add_token", self.token])
            self.mux.send_control([-1, None])
            if self.token_in != "handshake":
                self.ready.set()
        elif isinstance(value, list) and value and value[0] == -7 and value[1] is None:
            self.ready.set()

    async def connect(self) -> None:
        self.session = aiohttp.ClientSession()
        url, headers = self.url, {}
        if self.token and self.token_in == "query":
            url += "?access_token=" + self.token
        elif self.token and self.token_in == "header":
            headers["Authorization"] = f"Bearer {self.token}"
        self.ws = await self.session.ws_connect(url, headers=headers, autoping=False, max_msg_size=0,
                                                ssl=self.ssl_context if self.ssl_context else True)
        self.mux = Multiplexer(on_stream=self._accept, on_control=self._on_control,
                               limits=MuxLimits(), name="test-device")
        self.task = asyncio.ensure_future(run_tunnel(self.ws, self.mux, heartbeat=Heartbeat(1, 3),
                                                     stop=self.stop))

    async def start(self, timeout: float = 5.0) -> Device:
        await self.connect()
        await asyncio.wait_for(self.ready.wait(), timeout)
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(Exception):
                self.result = await asyncio.wait_for(self.task, 3)
        if self.session is not None:
            await self.session.close()

    async def kill(self) -> None:
        """Vanish without a goodbye (like a crashed pod): drop the TCP connection."""
        assert self.ws is not None
        transport = transport_of(self.ws)
        if transport is not None:
            transport.abort()
        await self.close()


# -- clients ---------------------------------------------------------------------------------------------

async def tls_request(port: int, name: str, ca: CertificateAuthority, payload: bytes = b"ping",
                      timeout: float = 5.0) -> bytes:
    ctx = ca.client_context()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name), timeout)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()


async def http_get(port: int, host: str, path: str = "/",
                   timeout: float = 5.0) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}{path}", headers={"Host": host},
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def tcp_roundtrip(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send `payload` and read the echo concurrently (every hop has bounded buffers, so a client that
    writes everything before reading would deadlock against an echo server by design)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)

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


async def upload_until_stalled(writer: asyncio.StreamWriter, seconds: float = 3.0,
                               limit: int = 64 << 20) -> int:
    """Write 1 MiB chunks for `seconds` and return how many bytes went out; fails when all of `limit` went
    out in that time (nothing pushed back)."""
    chunk, sent = b"u" * (1 << 20), 0
    try:
        async with asyncio.timeout(seconds):
            while sent < limit:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
    except TimeoutError:
        return sent
    raise AssertionError(f"{limit} bytes went out in under {seconds:g} s: nothing pushed back")


async def status(relay: EdgeRelay) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{relay.http_port}/status") as resp:
        return json.loads(await resp.text())  # type: ignore[no-any-return]


async def metrics_text(relay: EdgeRelay) -> str:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{relay.http_port}/metrics") as resp:
        return await resp.text()
