"""The sidecar over wss:// with a private CA (edge.caFile) and a Bearer token, against a small TLS WebSocket
server that speaks the edge side of the tunnel with mproxy.tunnel (open a stream, send, read the echo)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from mproxy.codec import Address, hello_message
from mproxy.tunnel import Heartbeat, Multiplexer, StreamHandler, run_tunnel

from .certs import CertAuthority
from .conftest import BackendFactory, SidecarFactory, echo, serve_handler

pytestmark = [pytest.mark.e2e]

TOKEN = "wss-token-123"


class Collect(StreamHandler):
    def __init__(self) -> None:
        self.data = bytearray()
        self.more = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.more.set()


async def test_wss_with_private_ca_and_bearer_token(tmp_path: Path, backends: BackendFactory,
                                                    run_sidecar: SidecarFactory) -> None:
    ca = CertAuthority.create(tmp_path / "ca")
    backend = await backends(echo)
    seen_auth: list[str] = []
    got = Collect()
    opened = asyncio.Event()

    async def tunnel(request: web.Request) -> web.WebSocketResponse:
        seen_auth.append(request.headers.get("Authorization", ""))
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        mux = Multiplexer(name="test-edge")
        mux.send_control(hello_message())
        stream = mux.open_stream(Address("IPv4", "198.51.100.7", "40000"), got, service="tcp",
                                 serviceport=9)
        stream.write(b"through wss")
        opened.set()
        await run_tunnel(ws, mux, heartbeat=Heartbeat(1, 3))
        return ws

    runner, port = await serve_handler(tunnel, "/t", ca.server_context("localhost"))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    cfg = {
        "edge": {"urls": [f"wss://localhost:{port}/t"], "caFile": ca.ca_file, "tokenFile": str(token_file)},
        "routes": [{"name": "echo", "backend": {"host": "127.0.0.1", "port": backend.port}}],
        "http": {"listen": "127.0.0.1:0"},
        "drainSeconds": 0.2,
        "reconnect": {"initialSeconds": 0.05, "maxSeconds": 0.2},
    }
    try:
        async with run_sidecar(cfg) as sidecar:
            await asyncio.wait_for(opened.wait(), 10)
            async with asyncio.timeout(5):
                while len(got.data) < 11:
                    got.more.clear()
                    await got.more.wait()
            assert bytes(got.data) == b"through wss"
            assert seen_auth == [f"Bearer {TOKEN}"]
            assert sidecar.tunnels[0].connected
        # Without the CA the edge's certificate is refused and the sidecar says why.
        del cfg["edge"]["caFile"]  # type: ignore[attr-defined]
        async with run_sidecar(cfg) as sidecar:
            async with asyncio.timeout(5):
                while not sidecar.tunnels[0].last_error:
                    await asyncio.sleep(0.02)
            assert "certificate verify failed" in sidecar.tunnels[0].last_error
            assert not sidecar.ready()[0]
    finally:
        await runner.cleanup()


async def test_a_relay_that_ignores_pause_gets_that_client_cut_off(backends: BackendFactory,
                                                                   run_sidecar: SidecarFactory) -> None:
    """Our own edge-side mux whose handler ignores pause_writing: the sidecar pauses, waits out the grace
    period, then answers E_BUFFER for that client only; the tunnel and another stream carry on."""
    from mproxy.sidecar.backend import BackendOptions

    release = asyncio.Event()

    async def stuck(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await release.wait()

    stuck_b = await backends(stuck)
    echo_b = await backends(echo)
    greedy = Collect()
    polite = Collect()
    errors: list[tuple[str, str]] = []
    greedy.error_received = lambda message, code: errors.append((message, code))  # type: ignore[method-assign]
    streams: dict[str, object] = {}
    done = asyncio.Event()

    async def tunnel(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        mux = Multiplexer(name="test-edge")
        mux.send_control(hello_message())
        streams["greedy"] = g = mux.open_stream(Address("IPv4", "198.51.100.1", "1"), greedy, service="tcp",
                                                serviceport=1)
        streams["polite"] = p = mux.open_stream(Address("IPv4", "198.51.100.2", "2"), polite, service="tcp",
                                                serviceport=2)

        async def flood() -> None:
            blob = b"g" * 65536
            while not g.closed:
                g.write(blob)  # ignores pause_writing on purpose
                await asyncio.sleep(0)
            done.set()

        task = asyncio.ensure_future(flood())
        p.write(b"still here")
        await run_tunnel(ws, mux, heartbeat=Heartbeat(1, 3))
        task.cancel()
        return ws

    runner, port = await serve_handler(tunnel)
    cfg = {
        "edge": {"urls": [f"ws://127.0.0.1:{port}/"]},
        "routes": [
            {"name": "stuck", "match": {"ports": [1]},
             "backend": {"host": "127.0.0.1", "port": stuck_b.port}},
            {"name": "echo", "match": {"ports": [2]},
             "backend": {"host": "127.0.0.1", "port": echo_b.port}},
        ],
        "http": {"listen": "127.0.0.1:0"},
        "drainSeconds": 0.2,
    }
    try:
        def small_buffers(sidecar: object) -> None:
            sidecar._backend_opts = lambda: BackendOptions(  # type: ignore[attr-defined]
                stream_buffer=16384, soft_buffer=262144, hard_buffer=64 << 20, grace=0.3)

        async with run_sidecar(cfg, prepare=small_buffers) as sidecar:
            await asyncio.wait_for(done.wait(), 10)
            assert errors and errors[0][1] == "E_BUFFER"
            async with asyncio.timeout(5):
                while len(polite.data) < 10:
                    polite.more.clear()
                    await polite.more.wait()
            assert bytes(polite.data) == b"still here"
            assert sidecar.tunnels[0].connects == 1
            assert sidecar.metrics.registry.get_sample_value(
                "mproxy_sidecar_stream_errors_total",
                {"route": "stuck", "client": "198.51.100.1", "reason": "buffer_overflow"}) == 1
    finally:
        release.set()
        await runner.cleanup()
