"""The bound on a UDP client's queue in the tunnel, end to end: a tunnel that stops draining drops, never
buffers.

In one process the datagram source and the tunnel writer share a loop, so the queue never fills; here
`mproxy edge` and `mproxy sidecar` are their own processes and one of them is frozen (SIGSTOP): the
tunnel's TCP connection stops draining, the other's WebSocket writer stops, and datagrams that keep coming
(a backend flooding replies when the edge is frozen, a client flooding queries when the sidecar is) fill
that client's queue (256 datagrams / 256 KiB). Past it every datagram is dropped and counted
(mproxy_<role>_udp_dropped_total{reason="queue_full"}), that role's memory stays flat however much more
arrives, and once the frozen one runs again (SIGCONT) the same tunnel carries traffic both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.faults.harness import Proc, eventually, get_json, get_text, rss_kib
from tests.ports import free_port

from mproxy.edge.auth import mint

from .harness import PUBLIC_PORT, SECRET, free_udp_port

pytestmark = pytest.mark.e2e

SIZE = 1400  # bytes per flood datagram
BURST = 16  # flood datagrams per millisecond at most (~22 MB/s): far more than a frozen tunnel takes
FULL = 1000  # queue_full drops that prove the queue is at its bound
MORE = 16 << 20  # bytes of flood dropped after that, to show they cost no memory
FLAT_KIB = 4096  # the sidecar may grow this much while MORE bytes are dropped (allocator noise)
TOTAL_KIB = 24 << 10  # and this much over the whole test (the tunnel's buffers, the queue, the parser)
# Heartbeats far longer than the freeze: the tunnel must not be declared dead while the edge is stopped.
HEARTBEAT = {"intervalSeconds": 10, "timeoutSeconds": 60}


class Flood:
    """While `flooding`, a thread sends SIZE-byte datagrams from `sock` to `self.peer` (once known) as fast
    as BURST allows."""

    def __init__(self, sock: socket.socket, peer: Any = None) -> None:
        self.sock = sock
        self.peer = peer
        self.flooding = threading.Event()
        self.closed = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._flood, daemon=True)]
        self.threads[0].start()

    def _flood(self) -> None:
        payload = b"F" * SIZE
        while not self.closed.is_set():
            if not self.flooding.wait(0.1) or self.peer is None:
                continue
            for _ in range(BURST):
                with contextlib.suppress(OSError):  # ECONNREFUSED/ENOBUFS: UDP, keep going
                    self.sock.sendto(payload, self.peer)
                    self.sent += 1
            time.sleep(0.001)

    def close(self) -> None:
        self.flooding.clear()
        self.closed.set()
        for t in self.threads:
            t.join(5)
        self.sock.close()


class Amplifier(Flood):
    """A UDP backend in a thread: answers b"ping N" with b"pong N"; its flood goes to the last peer (the
    sidecar's socket is connected to this one, so the flood must come from it)."""

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.port: int = sock.getsockname()[1]
        super().__init__(sock)
        self.threads.append(threading.Thread(target=self._serve, daemon=True))
        self.threads[-1].start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.closed.is_set():
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.peer = peer
            if data.startswith(b"ping"):
                self.sock.sendto(b"pong" + data[4:], peer)


class Client(asyncio.DatagramProtocol):
    """Counts flood datagrams, keeps the others (pongs) in a queue."""

    def __init__(self) -> None:
        self.flood = 0
        self.got: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[:1] == b"F":
            self.flood += 1
        else:
            self.got.put_nowait(data)

    async def ask(self, n: int, timeout: float = 10.0) -> bytes:
        assert self.transport is not None
        self.transport.sendto(b"ping %d" % n)
        return await asyncio.wait_for(self.got.get(), timeout)


def _env_loop(policy: asyncio.AbstractEventLoopPolicy) -> str:
    """The roles run on the loop this test was parametrized with (conftest: asyncio, uvloop)."""
    return "asyncio" if type(policy) is asyncio.DefaultEventLoopPolicy else "uvloop"


async def drops(role: str, http: int, reason: str) -> float:
    name = f"mproxy_{role}_udp_dropped_total"
    text = await get_text(http, "/metrics")
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels.get("reason") == reason:
                return float(s.value)
    raise AssertionError(f"no {name} series on the {role}'s /metrics")


# The edge frozen: the backend floods replies and the sidecar's queue fills. The sidecar frozen: a client
# floods the edge and the edge's queue fills (no per-client rate limit to speak of, so the queue is what
# must hold).
@pytest.mark.parametrize("frozen", ["edge", "sidecar"])
async def test_a_frozen_peer_fills_the_udp_queue_which_drops_not_buffers(
        tmp_path: Path, event_loop_policy: asyncio.AbstractEventLoopPolicy,
        monkeypatch: pytest.MonkeyPatch, frozen: str) -> None:
    monkeypatch.setenv("MPROXY_EVENT_LOOP", _env_loop(event_loop_policy))
    backend = Amplifier()
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "token").write_text(mint(SECRET, domains=[], ports=[PUBLIC_PORT]))
    udp_port, tunnel_port, edge_http, sidecar_http = free_udp_port(), free_port(), free_port(), free_port()
    (tmp_path / "edge.yaml").write_text(yaml.safe_dump({
        "auth": {"secretFile": str(tmp_path / "secret")},
        "listeners": [{"kind": "udp", "listen": f"127.0.0.1:{udp_port}", "publicPort": PUBLIC_PORT,
                       "datagramRate": 1_000_000, "datagramBurst": 1_000_000}],
        "tunnel": {"listen": f"127.0.0.1:{tunnel_port}", "path": "/tunnel"},
        "http": {"listen": f"127.0.0.1:{edge_http}"}, "heartbeat": HEARTBEAT,
        "logging": {"format": "text", "level": "info"}, "drainSeconds": 1}))
    (tmp_path / "sidecar.yaml").write_text(yaml.safe_dump({
        "edge": {"urls": [f"ws://127.0.0.1:{tunnel_port}/tunnel"], "tokenFile": str(tmp_path / "token")},
        "routes": [{"name": "amp", "match": {"services": ["udp"], "ports": [PUBLIC_PORT]},
                    "backend": {"host": "127.0.0.1", "port": backend.port}}],
        "http": {"listen": f"127.0.0.1:{sidecar_http}"}, "heartbeat": HEARTBEAT,
        "logging": {"format": "text", "level": "info"}, "drainSeconds": 1}))
    edge = Proc("edge", [sys.executable, "-m", "mproxy", "edge", "--config", str(tmp_path / "edge.yaml")],
                tmp_path / "edge.log", "mproxy edge ready")
    sidecar = Proc("sidecar", [sys.executable, "-m", "mproxy", "sidecar", "--config",
                               str(tmp_path / "sidecar.yaml"), "--no-reload"], tmp_path / "sidecar.log", "")
    transport: asyncio.DatagramTransport | None = None
    flood: Flood = backend
    try:
        await edge.start()
        with sidecar.log.open("ab") as err:
            sidecar.proc = await asyncio.create_subprocess_exec(  # it prints no ready line: /status says
                *sidecar.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=err)

        async def registered() -> bool:
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                status = await get_json(edge_http)
                return bool(status["ports"].get(str(PUBLIC_PORT)))
            return False

        await eventually(registered, 30, sidecar.tail)
        tunnel_ids = [t["id"] for t in (await get_json(edge_http))["tunnels"]]
        loop = asyncio.get_running_loop()
        transport, c = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", udp_port))
        assert await c.ask(0) == b"pong 0"
        stopped, dropping = (edge, sidecar) if frozen == "edge" else (sidecar, edge)
        role, http = ("sidecar", sidecar_http) if frozen == "edge" else ("edge", edge_http)
        if frozen == "sidecar":  # a second client, which floods the edge
            flood = Flood(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), ("127.0.0.1", udp_port))
        rss_start = rss_kib(dropping.pid)

        stopped.signal(signal.SIGSTOP)
        flood.flooding.set()

        def progress() -> str:
            return (f"flood {flood.sent} x {SIZE} B, {role} RSS {rss_kib(dropping.pid)} KiB; "
                    f"{dropping.tail(5)}")

        async def at_least(n: float) -> bool:
            return await drops(role, http, "queue_full") >= n

        took = await eventually(lambda: at_least(FULL), 20, progress)
        assert dropping.alive, dropping.tail()
        dropped, rss_full = await drops(role, http, "queue_full"), rss_kib(dropping.pid)
        await eventually(lambda: at_least(dropped + MORE // SIZE), 30, progress)
        rss_more = rss_kib(dropping.pid)
        flood.flooding.clear()
        assert await drops(role, http, "closed") == 0  # the stream stayed open all along
        print(f"{frozen} frozen: queue full {took:.2f} s in; flood {flood.sent} x {SIZE} B; {role} RSS "
              f"{rss_start} KiB -> {rss_full} KiB at the bound -> {rss_more} KiB after {MORE >> 20} MiB "
              "more was dropped")
        assert rss_more - rss_full < FLAT_KIB, "memory grew with datagrams that were to be dropped"
        assert rss_more - rss_start < TOTAL_KIB

        stopped.signal(signal.SIGCONT)
        assert await c.ask(1, timeout=15) == b"pong 1"  # behind the backlog the queue held
        if frozen == "edge":
            assert c.flood > 0  # the replies queued before the bound went out once the tunnel drained
        assert [t["id"] for t in (await get_json(edge_http))["tunnels"]] == tunnel_ids  # no reconnect
        assert await drops(role, http, "closed") == 0
    finally:
        for proc in (edge, sidecar):
            with contextlib.suppress(ProcessLookupError, AssertionError):
                proc.signal(signal.SIGCONT)
        if transport is not None:
            transport.close()
        if flood is not backend:
            flood.close()
        backend.close()
        await sidecar.stop()
        await edge.stop()
