"""A real sidecar and a real edge that restarts: traffic flows again soon after the new edge listens
(the fast reconnect window), and a long outage is retried at a bounded, spaced-out rate (no tight loop)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.edge.harness import TCP_PUBLIC_PORT, start_edge, token, tunnel_url

from mproxy.config.sidecar import load_sidecar_config
from mproxy.edge.relay import EdgeRelay
from mproxy.sidecar.app import Sidecar
from mproxy.tunnel.backoff import FAST_MIN

pytestmark = pytest.mark.e2e

RESTART_BOUND = 1.0  # goal 0.5 s; generous for a loaded 2-core CI machine (the figure is printed)


async def _edge(tmp: Path, tcp_port: int = 0, tunnel_port: int = 0) -> EdgeRelay:
    return await start_edge(
        tmp,
        listeners=[{"kind": "tcp", "listen": f"127.0.0.1:{tcp_port}", "publicPort": TCP_PUBLIC_PORT}],
        tunnel={"listen": f"127.0.0.1:{tunnel_port}"},
    )


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    w.close()


@contextlib.asynccontextmanager
async def _sidecar(tmp: Path, relay: EdgeRelay, backend_port: int,
                   **reconnect: Any) -> AsyncIterator[Sidecar]:
    token_file = tmp / "token"
    token_file.write_text(token([], [TCP_PUBLIC_PORT]))
    cfg = load_sidecar_config({
        "edge": {"urls": [tunnel_url(relay)], "tokenFile": str(token_file)},
        "routes": [{"name": "echo", "match": {}, "backend": {"host": "127.0.0.1", "port": backend_port}}],
        "reconnect": {"initialSeconds": 0.1, "maxSeconds": 30, **reconnect},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"format": "text", "level": "warning"},
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


async def _roundtrip(port: int, payload: bytes, timeout: float) -> bytes | None:
    """One echo through the edge's TCP listener; None when the edge has no tunnel to carry it yet."""
    try:
        async with asyncio.timeout(timeout):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            try:
                w.write(payload)
                await w.drain()
                return await r.readexactly(len(payload))
            finally:
                w.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None


async def test_traffic_flows_again_soon_after_the_edge_restarts(tmp_path: Path) -> None:
    backend = await asyncio.start_server(_echo, "127.0.0.1", 0)
    relay = await _edge(tmp_path)
    relay2: EdgeRelay | None = None
    tcp_port = relay.listeners[0].port
    try:
        async with _sidecar(tmp_path, relay, backend.sockets[0].getsockname()[1]):
            assert await _roundtrip(tcp_port, b"before", 5) == b"before"
            await relay.drain(grace=0)  # the edge restarting: its tunnels close with 1001
            await asyncio.sleep(1.0)
            relay2 = await _edge(tmp_path, tcp_port, relay.tunnel_port)
            listening = time.monotonic()
            async with asyncio.timeout(10):
                while await _roundtrip(tcp_port, b"after", 0.5) != b"after":
                    await asyncio.sleep(0.01)
            flowing = time.monotonic() - listening
            print(f"traffic flowing again {flowing * 1000:.0f} ms after the new edge listened")
            assert flowing <= RESTART_BOUND, f"{flowing:.3f} s after the new edge listened"
    finally:
        if relay2 is not None:
            await relay2.close()
        backend.close()


async def test_a_long_outage_is_retried_spaced_out(tmp_path: Path) -> None:
    backend = await asyncio.start_server(_echo, "127.0.0.1", 0)
    relay = await _edge(tmp_path)
    dials: list[float] = []

    async def count(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        # A load balancer answering while the edge is down: a dial that never becomes a tunnel (so no new
        # fast window). A 503 rather than a reset, which aiohttp would retry at once on a second socket.
        dials.append(time.monotonic())
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2):
                await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await w.drain()
        w.close()

    window = 2.0
    try:
        async with _sidecar(tmp_path, relay, backend.sockets[0].getsockname()[1], fastWindowSeconds=window):
            await relay.close()
            lost = time.monotonic()
            counter = await asyncio.start_server(count, "127.0.0.1", relay.tunnel_port)
            try:
                await asyncio.sleep(window + 3.0)
            finally:
                counter.close()
    finally:
        backend.close()
    offsets = [t - lost for t in dials]
    gaps = [b - a for a, b in itertools.pairwise(dials)]
    print("dials after the loss (s):", " ".join(f"{o:.2f}" for o in offsets))
    fast = [o for o in offsets if o < window]
    after = [o for o in offsets if o >= window + 0.3]
    assert min(gaps[:len(fast)]) >= FAST_MIN - 0.02  # quick, never a tight loop ...
    assert 4 <= len(fast) <= window / FAST_MIN + 1  # ... and bounded
    assert min(gaps) >= 0.005  # after the window, full jitter: short gaps happen, but not in a row ...
    assert len(after) < 12  # ... fewer than the fast rate (>= 1 per 0.25 s) would give
    assert max(gaps[len(fast):], default=0) > 0.25


async def test_a_refused_token_after_connecting_gets_no_fast_retries(tmp_path: Path) -> None:
    # tokenIn: handshake connects first, then the edge refuses the `add_token`: an established tunnel that
    # ends as auth_failed. Retrying that 4 times a second would only hammer the edge: normal backoff.
    relay = await _edge(tmp_path)
    token_file = tmp_path / "bad-token"
    token_file.write_text(token([], [TCP_PUBLIC_PORT], secret=b"x" * 32))
    cfg = load_sidecar_config({
        "edge": {"urls": [tunnel_url(relay)], "tokenFile": str(token_file), "tokenIn": "handshake"},
        "routes": [{"name": "echo", "match": {}, "backend": {"host": "127.0.0.1", "port": 9}}],
        "reconnect": {"initialSeconds": 0.1, "maxSeconds": 30},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"format": "text", "level": "warning"},
    })
    sidecar = Sidecar(cfg, config_path=None)
    await sidecar.start()
    try:
        await asyncio.sleep(3.0)
        tunnel = sidecar.tunnels[0]
        attempts = tunnel.connects
    finally:
        await sidecar.shutdown()
        await relay.close()
    print(f"dials in 3 s with a refused token: {attempts}")
    assert tunnel.last_reason == "auth_failed"
    assert 2 <= attempts < 10  # the fast window would dial >= 12 times in 3 s
