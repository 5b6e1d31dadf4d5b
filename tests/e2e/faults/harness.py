"""Real processes for the fault tests: `mproxy edge`, `mproxy sidecar`, backend processes, a TCP proxy the
test controls between each sidecar and the edge, checksummed transfers, and fd/thread counts from /proc.

Layout of one test (`Rig`): clients -> edge (tcp listener, publicPort 7022) -> proxy A/B -> sidecar A/B
-> backend A/B (echo, first byte = the replica's tag). Every port is fixed when the rig is built, so a
killed process comes back on the same ports. Heartbeats are short (0.5 s / 2 s) so dead peers are found
within a test's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tests.ports import free_port

from mproxy.edge.auth import mint

HERE = Path(__file__).resolve().parent
BACKEND_PY = HERE / "backend.py"
SECRET = b"fault-suite-secret-0123456789abc"
PUBLIC_PORT = 7022
SINK_PORT = 7023  # the public port of the listener whose route leads to a backend that never reads
RECONNECT_BUDGET = 3.0  # s from the edge listening again to a tunnel carrying traffic (fast window: ~0.25 s)
HEARTBEAT = {"intervalSeconds": 0.5, "timeoutSeconds": 2}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if both else value
    return out


# -- processes -----------------------------------------------------------------------------------------

def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads: line for pid {pid}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS: line for pid {pid}")


class Proc:
    """One child process; stdout is read for its ready line, stderr goes to a log file shown on failure."""

    def __init__(self, name: str, argv: list[str], log: Path, ready: str) -> None:
        self.name, self.argv, self.log, self.ready = name, argv, log, ready
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_line = ""
        self.ready_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = 30) -> Proc:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.1, deadline - time.monotonic())
            line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            if not line:
                raise AssertionError(f"{self.name} exited before it was ready:\n{self.tail()}")
            if line.decode().startswith(self.ready):
                self.ready_line, self.ready_at = line.decode().strip(), time.monotonic()
                return self

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        """SIGKILL (nothing of a test depends on a clean exit here) and reap."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def mproxy_argv(role: str, config: Path) -> list[str]:
    argv = [sys.executable, "-m", "mproxy", role, "--config", str(config)]
    return argv + (["--no-reload"] if role == "sidecar" else [])


# -- a TCP proxy the test controls ----------------------------------------------------------------------

def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class _Pair:
    down: asyncio.StreamWriter
    up: asyncio.StreamWriter
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class TcpProxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:upstream. `blackhole()` stops moving bytes on the connections
    open now (both ways; their sockets stay open, so only a heartbeat can tell); `reset()` aborts them
    with an RST to both ends. Connections made later are forwarded normally."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.pairs: list[_Pair] = []
        self.accepted = 0
        self.accepted_at: list[float] = []  # time.monotonic() of each connection from the sidecar
        self.server: asyncio.Server | None = None

    async def start(self) -> TcpProxy:
        self.server = await asyncio.start_server(self._on_conn, "127.0.0.1", self.port)
        return self

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.accepted_at.append(time.monotonic())
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            _reset(writer)  # the edge is down: the sidecar sees what a refused connect looks like
            return
        pair = _Pair(writer, up_writer)
        pair.flowing.set()
        self.pairs.append(pair)
        pair.tasks = [asyncio.ensure_future(self._pump(pair, reader, up_writer)),
                      asyncio.ensure_future(self._pump(pair, up_reader, writer))]

    async def _pump(self, pair: _Pair, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await pair.flowing.wait()
                data = await reader.read(65536)
                await pair.flowing.wait()  # blackholed while reading: drop nothing, deliver nothing
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            _reset(writer)

    def blackhole(self) -> int:
        for pair in self.pairs:
            pair.flowing.clear()
        return len(self.pairs)

    def reset(self) -> int:
        n = len(self.pairs)
        for pair in self.pairs:
            for task in pair.tasks:
                task.cancel()
            _reset(pair.down)
            _reset(pair.up)
        self.pairs.clear()
        return n

    async def close(self) -> None:
        self.reset()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


# -- HTTP endpoints -----------------------------------------------------------------------------------

async def _get(port: int, path: str) -> tuple[int, bytes]:
    """GET with `Connection: close`, so no keep-alive socket is left in the count of the server's fds."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def get_json(port: int, path: str = "/status") -> Any:
    """/status as JSON; any other path: its HTTP status code."""
    code, body = await _get(port, path)
    return json.loads(body) if path == "/status" else code


async def get_text(port: int, path: str) -> str:
    return (await _get(port, path))[1].decode(errors="replace")


# -- checksummed transfers ----------------------------------------------------------------------------

@dataclass
class Transfer:
    """One client stream: `size` random bytes sent in paced chunks, the echo read concurrently."""

    size: int = 640 << 10
    chunk: int = 20 << 10
    pace: float = 0.05
    payload: bytes = b""
    tag: bytes = b""
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False
    error: str | None = None
    ended_at: float = 0.0

    def __post_init__(self) -> None:
        self.payload = os.urandom(self.size)

    @property
    def intact(self) -> bool:
        """Every byte came back unchanged and the stream ended cleanly (sha256 of both sides)."""
        return (self.eof and self.error is None
                and hashlib.sha256(self.received).digest() == hashlib.sha256(self.payload).digest())

    @property
    def uncorrupted(self) -> bool:
        """What came back (maybe cut short) is a prefix of what was sent."""
        return self.payload.startswith(bytes(self.received))

    async def run(self, port: int, timeout: float, local_addr: tuple[str, int] | None = None) -> Transfer:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local_addr)
                sender = asyncio.ensure_future(self._send(writer))
                try:
                    await self._receive(reader)
                finally:
                    sender.cancel()
                    with contextlib.suppress(BaseException):
                        await sender
                    writer.close()
        except TimeoutError:
            self.error = "hung"
        except OSError as exc:  # the connect itself failed
            self.error = f"connect: {type(exc).__name__}"
        self.ended_at = time.monotonic()
        return self

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        try:
            for offset in range(0, self.size, self.chunk):
                writer.write(self.payload[offset:offset + self.chunk])
                await writer.drain()
                await asyncio.sleep(self.pace)
            writer.write_eof()
        except OSError:
            pass  # the stream was cut: the receiving side records how

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            self.tag = await reader.readexactly(1)
            while data := await reader.read(65536):
                self.received += data
            self.eof = True
        except asyncio.IncompleteReadError:
            self.error = "closed before the tag"
        except OSError as exc:
            self.error = type(exc).__name__ + ("" if self.tag else " before the tag")


def summary(transfers: list[Transfer]) -> str:
    """One item per transfer: replica tag, bytes back / sent, and the error of those not intact."""
    return ", ".join(f"{t.tag.decode() or '?'}:{len(t.received)}/{t.size}"
                     + ("" if t.intact else f" {t.error}") for t in transfers)


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], within: float,
                     what: Callable[[], Any]) -> float:
    """Poll `check` until true; fail with `what()` after `within` s. Returns the seconds it took."""
    start = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within:g} s: {what()}")
        await asyncio.sleep(0.05)


# -- the rig --------------------------------------------------------------------------------------------

class Rig:
    """An edge, replicas A and B (proxy, sidecar, backend each), all on fixed loopback ports."""

    def __init__(self, tmp: Path, *, edge: dict[str, Any] | None = None,
                 sidecar: dict[str, Any] | None = None, modes: dict[str, str] | None = None,
                 labels: tuple[str, ...] = ("A", "B"), sink: bool = False) -> None:
        """`sink`: a second edge listener (public port SINK_PORT) routed by every sidecar to one backend
        process that accepts and never reads."""
        self.tmp = tmp
        (tmp / "secret").write_bytes(SECRET)
        (tmp / "token").write_text(mint(SECRET, ports=[PUBLIC_PORT, SINK_PORT]))
        self.client_port, self.tunnel_port, self.edge_http = free_port(), free_port(), free_port()
        self.sink_port = free_port()
        pairs = [(self.client_port, PUBLIC_PORT)] + ([(self.sink_port, SINK_PORT)] if sink else [])
        listeners = [{"kind": "tcp", "listen": f"127.0.0.1:{port}", "publicPort": public}
                     for port, public in pairs]
        edge_cfg = merge({
            "auth": {"secretFile": str(tmp / "secret")},
            "listeners": listeners,
            "tunnel": {"listen": f"127.0.0.1:{self.tunnel_port}", "path": "/tunnel"},
            "http": {"listen": f"127.0.0.1:{self.edge_http}"},
            "heartbeat": {**HEARTBEAT, "authTimeoutSeconds": 2},
            "logging": {"format": "text", "level": "info"},
            "drainSeconds": 5,
        }, edge or {})
        (tmp / "edge.yaml").write_text(yaml.safe_dump(edge_cfg))
        self.edge = Proc("edge", mproxy_argv("edge", tmp / "edge.yaml"), tmp / "edge.log",
                         "mproxy edge ready")
        self.labels = labels
        self.proxies = {label: TcpProxy(self.tunnel_port) for label in labels}
        self.backend_ports = {label: free_port() for label in labels}
        self.sidecar_http = {label: free_port() for label in labels}
        self.backends: dict[str, Proc] = {}
        self.sidecars: dict[str, Proc] = {}
        routes_extra: list[dict[str, Any]] = []
        if sink:
            sink_backend = free_port()
            self.backends["sink"] = Proc("backend sink", [sys.executable, str(BACKEND_PY), str(sink_backend),
                                                          "S", "sink"], tmp / "backend-sink.log", "ready")
            routes_extra.append({"name": "sink", "match": {"ports": [SINK_PORT]},
                                 "backend": {"host": "127.0.0.1", "port": sink_backend}})
        for label in labels:
            mode = (modes or {}).get(label, "echo")
            self.backends[label] = Proc(
                f"backend {label}",
                [sys.executable, str(BACKEND_PY), str(self.backend_ports[label]), label, mode],
                tmp / f"backend-{label}.log", "ready")
            cfg = merge({
                "edge": {"urls": [f"ws://127.0.0.1:{self.proxies[label].port}/tunnel"],
                         "tokenFile": str(tmp / "token")},
                "routes": [{"name": "echo", "match": {"services": ["tcp"]},
                            "backend": {"host": "127.0.0.1", "port": self.backend_ports[label]}},
                           *routes_extra],
                "heartbeat": HEARTBEAT,
                "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.5},
                "http": {"listen": f"127.0.0.1:{self.sidecar_http[label]}"},
                "logging": {"format": "text", "level": "info"},
                "drainSeconds": 5,
            }, sidecar or {})
            (tmp / f"sidecar-{label}.yaml").write_text(yaml.safe_dump(cfg))
            # the sidecar prints nothing when ready: the rig waits for /readyz instead
            self.sidecars[label] = Proc(f"sidecar {label}",
                                        mproxy_argv("sidecar", tmp / f"sidecar-{label}.yaml"),
                                        tmp / f"sidecar-{label}.log", "")

    def all_procs(self) -> list[Proc]:
        return [self.edge, *self.sidecars.values(), *self.backends.values()]

    async def start(self) -> Rig:
        for proxy in self.proxies.values():
            await proxy.start()
        await asyncio.gather(self.edge.start(), *(b.start() for b in self.backends.values()))
        await asyncio.gather(*(self.start_sidecar(label) for label in self.labels))
        await self.wait_tunnels(len(self.labels), within=30)
        return self

    async def start_sidecar(self, label: str) -> None:
        proc = self.sidecars[label]
        with proc.log.open("ab") as err:
            proc.proc = await asyncio.create_subprocess_exec(
                *proc.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err)
        await eventually(lambda: self._ready(label), 30, proc.tail)

    async def _ready(self, label: str) -> bool:
        if not self.sidecars[label].alive:
            raise AssertionError(f"sidecar {label} exited:\n{self.sidecars[label].tail()}")
        with contextlib.suppress(OSError, TimeoutError, IndexError, ValueError):
            return bool(await get_json(self.sidecar_http[label], "/readyz") == 200)
        return False

    async def tunnels(self) -> int:
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            status = await get_json(self.edge_http)
            return int(status["ports"].get(str(PUBLIC_PORT), 0))
        return 0

    async def wait_tunnels(self, n: int, within: float) -> float:
        async def have() -> bool:
            return await self.tunnels() == n
        return await eventually(have, within, lambda: f"edge tunnels != {n}\n{self.edge.tail()}")

    async def close(self) -> None:
        for proc in reversed(self.all_procs()):
            await proc.stop()
        for proxy in self.proxies.values():
            await proxy.close()

    # -- measuring ------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Open fds (key: the process's name) and threads ("<name> threads") of every running process.
        Neither role exposes its asyncio task count, so fds and threads stand in for it."""
        out: dict[str, int] = {}
        for p in self.all_procs():
            if p.alive:
                out[p.name], out[f"{p.name} threads"] = fds(p.pid), threads(p.pid)
        return out

    async def settled_counts(self, within: float = 5.0) -> dict[str, int]:
        """The fd counts once two readings 0.3 s apart agree (a process still closing has moved on)."""
        deadline = time.monotonic() + within
        last = self.counts()
        while True:
            await asyncio.sleep(0.3)
            now = self.counts()
            if now == last or time.monotonic() > deadline:
                return now
            last = now

    async def back_to(self, baseline: dict[str, int], within: float = 5.0) -> float:
        """Every process of `baseline` is back to its fd and thread counts."""
        def same() -> bool:
            now = self.counts()
            return all(now.get(name) == n for name, n in baseline.items())
        return await eventually(same, within, lambda: f"fds {self.counts()} != baseline {baseline}")

    # -- traffic --------------------------------------------------------------------------------------

    def transfers(self, n: int = 20, **kw: Any) -> list[Transfer]:
        return [Transfer(**kw) for _ in range(n)]

    async def run_all(self, transfers: list[Transfer], timeout: float = 15) -> list[Transfer]:
        return list(await asyncio.gather(*(t.run(self.client_port, timeout) for t in transfers)))

    async def in_flight(self, transfers: list[Transfer], timeout: float = 15
                        ) -> asyncio.Future[list[Transfer]]:
        """Start `transfers` and return once every one has had some bytes echoed (each is mid-transfer)."""
        running = asyncio.ensure_future(self.run_all(transfers, timeout))
        await eventually(lambda: all(t.received for t in transfers) or running.done(), 10,
                         lambda: summary(transfers))
        assert not running.done() and not any(t.eof for t in transfers), summary(transfers)
        return running


async def upload_until_stalled(port: int, seconds: float = 3.0, limit: int = 64 << 20
                               ) -> tuple[asyncio.StreamWriter, int]:
    """Connect, write 1 MiB chunks for `seconds` and never read; returns the writer (open, unless the edge
    cut the stalled stream: its idle sweep or buffer rule resets the client) and the bytes that went out.
    Fails when all of `limit` went out: nothing pushed back."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk, sent = os.urandom(1 << 20), 0
    try:
        async with asyncio.timeout(seconds):
            while sent < limit:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
    except (TimeoutError, ConnectionResetError):
        return writer, sent
    raise AssertionError(f"{limit} bytes went out in under {seconds:g} s: nothing pushed back")
