"""Real processes for the hostile-input tests: `mproxy edge` / `mproxy sidecar` as children, measured from
/proc (RSS, fds), and hostile peers built on the tunnel core that ignore `pause`.

- `Proc`: a child mproxy process; `rss_mb()`, `fds()`, `await metric(name, **labels)`.
- `start_edge(tmp, limits=...)`: an edge process with one tcp listener (public port TCP_PORT).
- `HostileTunnel`: a tunnel that dials the edge with a token for TCP_PORT and hands every stream the edge
  opens to `on_stream(stream)`; nothing in it honours `pause`.
- `HostileEdge`: a WebSocket endpoint a sidecar dials; `open(n)` opens streams towards the sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import yaml
from aiohttp import web

from mproxy.codec import Address
from mproxy.edge.auth import mint
from mproxy.tunnel.mux import Multiplexer, MuxLimits, Stream, StreamEnd, StreamHandler
from mproxy.tunnel.ws import Heartbeat, run_tunnel

SECRET = b"hostile-edge-secret-0123456789"
TCP_PORT = 7033
MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[3]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "sidecar") + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process, fields: dict[str, str]) -> None:
        self.proc = proc
        self.fields = fields
        self.logs = bytearray()
        self._drain = asyncio.ensure_future(self._read_logs())

    async def _read_logs(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.logs += chunk[: max(0, 4 * MiB - len(self.logs))]

    def port(self, name: str) -> int:
        """"tunnel", "http" (the observe port) or a listener kind ("tcp", "http:listener" ...)."""
        return int(self.fields[name])

    def listener(self, kind: str) -> int:
        return int(self.fields[f"listener:{kind}"])

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    async def metric(self, name: str, **labels: str) -> float:
        """One sample from the process's /metrics (0 when the series does not exist)."""
        from prometheus_client.parser import text_string_to_metric_families

        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{self.port('http')}/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._drain, 2)


def _nofile(soft: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    return apply


async def start_proc(args: list[str], ready_prefix: str | None, *, nofile: int | None = None) -> Proc:
    """Start `python -m mproxy ARGS` (with a soft open-file limit of `nofile`, as a default system has);
    with `ready_prefix`, wait for that line on stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mproxy", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=child_env(),
        preexec_fn=_nofile(nofile) if nofile else None)
    assert proc.stdout is not None
    if ready_prefix is None:
        return Proc(proc, {})
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    except TimeoutError:
        proc.kill()
        raise
    if not line.startswith(ready_prefix):
        proc.kill()
        err = await proc.stderr.read() if proc.stderr else b""
        raise AssertionError(f"{args[0]} did not start: {line!r} {err.decode()[-2000:]}")
    # "mproxy edge ready: tunnel=P http=P tls=P ...": the observe port first, then the listeners
    parts = [part.split("=", 1) for part in line.split() if "=" in part]
    fields = {k: v for k, v in parts[:2]} | {f"listener:{k}": v for k, v in parts[2:]}
    return Proc(proc, fields)


async def start_edge(tmp: Path, *, limits: dict[str, Any] | None = None,
                     listeners: list[dict[str, Any]] | None = None, nofile: int | None = None,
                     **extra: Any) -> Proc:
    secret = tmp / "secret"
    secret.write_bytes(SECRET)
    cfg: dict[str, Any] = {
        "auth": {"secretFile": str(secret)},
        "listeners": listeners or [{"kind": "tcp", "listen": "127.0.0.1:0", "publicPort": TCP_PORT}],
        "tunnel": {"listen": "127.0.0.1:0"},
        "http": {"listen": "127.0.0.1:0"},
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 5, "authTimeoutSeconds": 5},
        "logging": {"format": "text", "level": "info"},
        "drainSeconds": 1,
        **extra,
    }
    if limits:
        cfg["limits"] = limits
    path = tmp / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return await start_proc(["edge", "--config", str(path)], "mproxy edge ready", nofile=nofile)


def token(ports: list[int] | None = None, domains: list[str] | None = None) -> str:
    return mint(SECRET, domains=domains or [], ports=ports if ports is not None else [TCP_PORT])


class HostileTunnel:
    """Dials the edge, presents a token, and gives each stream the edge opens to `on_stream`."""

    def __init__(self, edge: Proc, on_stream: Callable[[Stream], StreamHandler],
                 tok: str | None = None) -> None:
        self.url = f"ws://127.0.0.1:{edge.port('tunnel')}/?access_token={tok or token()}"
        self.on_stream = on_stream
        self.session: aiohttp.ClientSession | None = None
        self.mux: Multiplexer | None = None
        self.task: asyncio.Task[Any] | None = None
        self.stop = asyncio.Event()

    async def start(self) -> HostileTunnel:
        self.session = aiohttp.ClientSession()
        ws = await self.session.ws_connect(self.url, autoping=False, max_msg_size=0)
        self.mux = Multiplexer(on_stream=self.on_stream, on_control=lambda value: None,
                               limits=MuxLimits(max_frame_bytes=4 * MiB), name="hostile")
        self.task = asyncio.ensure_future(run_tunnel(ws, self.mux, heartbeat=Heartbeat(1, 5),
                                                     stop=self.stop))
        await asyncio.sleep(0.3)  # the edge registers the grant on connect
        return self

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.task, 3)
        if self.session is not None:
            await self.session.close()


class Firehose(StreamHandler):
    """Writes `total` bytes as fast as the tunnel takes them, whatever the peer says about pause; records
    the error the peer answers with."""

    def __init__(self, stream: Stream, total: int, *, chunk: int = MiB) -> None:
        self.stream = stream
        self.total = total
        self.sent = 0
        self.error: tuple[str, str] | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.done_sending = asyncio.get_running_loop().create_future()
        self.task = asyncio.ensure_future(self._run(chunk))

    async def _run(self, chunk: int) -> None:
        block = b"h" * chunk
        while self.sent < self.total and not self.stream.closed:
            if self.stream.buffered < 4 * MiB:
                n = min(chunk, self.total - self.sent)
                self.stream.write(block[:n])
                self.sent += n
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.002)
        if not self.done_sending.done():
            self.done_sending.set_result(asyncio.get_running_loop().time())

    def error_received(self, message: str, code: str) -> None:
        self.error = (code, message)

    def stream_closed(self, end: StreamEnd) -> None:
        self.task.cancel()
        if not self.closed.done():
            self.closed.set_result(asyncio.get_running_loop().time())
        if not self.done_sending.done():
            self.done_sending.set_result(asyncio.get_running_loop().time())


def pause_reading(writer: asyncio.StreamWriter) -> None:
    """Stop reading `writer`'s socket (typeshed types StreamWriter.transport as a WriteTransport only)."""
    cast(asyncio.Transport, writer.transport).pause_reading()


def abort_all(writers: list[asyncio.StreamWriter]) -> None:
    """Abort every writer's transport (an ExitStack callback: `stack.callback(abort_all, held)`)."""
    for writer in writers:
        writer.transport.abort()


async def silent_client(port: int, first: bytes = b"x") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that sends `first` and then never reads (a small receive buffer, so bytes pile up at the
    relay, not in the kernel)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    pause_reading(writer)
    if first:
        writer.write(first)
        await writer.drain()
    return reader, writer


class HostileEdge:
    """A WebSocket endpoint that a sidecar dials; streams opened with `open()` ignore the sidecar's pause."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.mux: Multiplexer | None = None
        self.connected = asyncio.Event()
        self.stop = asyncio.Event()

    async def start(self) -> HostileEdge:
        async def handle(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(autoping=False, max_msg_size=0)
            await ws.prepare(request)
            self.mux = Multiplexer(on_control=lambda value: None, name="hostile-edge",
                                   limits=MuxLimits(max_frame_bytes=4 * MiB))
            self.connected.set()
            await run_tunnel(ws, self.mux, heartbeat=Heartbeat(1, 5), stop=self.stop)
            return ws

        app = web.Application()
        app.router.add_get("/", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    def open(self, i: int, handler: Callable[[Stream], StreamHandler], serviceport: int = TCP_PORT) -> Stream:
        assert self.mux is not None
        proxy = _Late()
        stream = self.mux.open_stream(Address("IPv4", f"198.51.100.{1 + i % 250}", str(40000 + i)), proxy,
                                      service="tcp", serviceport=serviceport)
        proxy.inner = handler(stream)
        stream.set_handler(proxy.inner)
        return stream

    async def close(self) -> None:
        self.stop.set()
        if self.runner is not None:
            await self.runner.cleanup()


class _Late(StreamHandler):
    inner: StreamHandler | None = None


async def start_sidecar(tmp: Path, edge_port: int, backend_port: int, **extra: Any) -> Proc:
    tok = tmp / "token"
    tok.write_text(token())
    cfg: dict[str, Any] = {
        "edge": {"urls": [f"ws://127.0.0.1:{edge_port}/"], "tokenFile": str(tok), "tokenIn": "query"},
        "routes": [{"name": "sink", "match": {"ports": [TCP_PORT]},
                    "backend": {"host": "127.0.0.1", "port": backend_port}}],
        "heartbeat": {"intervalSeconds": 1, "timeoutSeconds": 5},
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.5},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"format": "text", "level": "info"},
        "drainSeconds": 1,
        **extra,
    }
    path = tmp / "sidecar.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return await start_proc(["sidecar", "--config", str(path)], None)
