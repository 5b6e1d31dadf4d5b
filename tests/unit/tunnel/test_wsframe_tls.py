"""tunnel/wsframe over TLS (wss): bulk one way, with a peer that sends nothing back, must not stall.

The regression (issue 11): with the write-buffer high water at 0 on an SSL transport, asyncio's and uvloop's
SSL protocol paused the writer after every batch even when it had flushed everything, and only the next
message from the peer resumed it: 24 MiB moved 7 MB in 60 s. Run on both loops (conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.conftest import serve_app

from mproxy.aiohttp_compat import transport_of
from mproxy.ca import CertificateAuthority
from mproxy.codec import Address
from mproxy.tunnel import Heartbeat, Multiplexer, Stream, StreamHandler, run_tunnel

SIZE = 24 << 20
BOUND = 20.0  # seconds; a healthy run takes well under 2 s, the stall took minutes
QUIET = Heartbeat(60, 120)  # no pings during the test: nothing from the peer may unstick the writer


class Sink(StreamHandler):
    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.n = 0
        self.more = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.sha.update(data)
        self.n += len(data)
        self.more.set()

    async def wait(self, n: int) -> str:
        while self.n < n:
            self.more.clear()
            await self.more.wait()
        return self.sha.hexdigest()


async def pump(stream: Stream, blob: bytes) -> None:
    """Write `blob` honouring pause_writing (the producer stops while the stream's queue is full)."""
    view = memoryview(blob)
    for off in range(0, len(view), 1 << 20):
        while stream.writing_paused:
            await asyncio.sleep(0.001)
        stream.write(view[off: off + (1 << 20)])


class Seen:
    """The two ends' WebSockets, once open (for the tests that poke at transports)."""

    edge_ws: Any = None
    side_ws: Any = None


@contextlib.asynccontextmanager
async def wss_pair(tmp_path: Path, on_side_stream: type[StreamHandler]
                   ) -> AsyncIterator[tuple[Multiplexer, list[StreamHandler]]]:
    """An edge Multiplexer behind an aiohttp wss:// server and a side Multiplexer on the client end."""
    ca = CertificateAuthority.create("wsframe test CA")
    server_ctx = ca.issue(["localhost"]).server_context(tmp_path)
    edge = Multiplexer(name="edge")
    accepted: list[StreamHandler] = []

    def accept(stream: Stream) -> StreamHandler:
        handler = on_side_stream()
        handler.stream = stream  # type: ignore[attr-defined]
        accepted.append(handler)
        return handler

    side = Multiplexer(on_stream=accept, name="side")
    stop = asyncio.Event()

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, max_msg_size=0)
        await ws.prepare(request)
        Seen.edge_ws = ws
        await run_tunnel(ws, edge, heartbeat=QUIET, stop=stop)
        return ws

    app = web.Application()
    app.router.add_get("/", ws_handler)
    runner, port = await serve_app(app, ssl_context=server_ctx)
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"https://localhost:{port}/", autoping=False, max_msg_size=0,
                                          ssl=ca.client_context())
            Seen.side_ws = ws
            task = asyncio.ensure_future(run_tunnel(ws, side, heartbeat=QUIET, stop=stop))
            try:
                yield edge, accepted
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 5)
    finally:
        await runner.cleanup()


class Upload(Sink):
    pass


class Download(Sink):
    """The side's handler: as soon as the stream opens, send SIZE bytes back to the edge."""

    blob = b""

    def __init__(self) -> None:
        super().__init__()
        self.task: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(pump(self.stream, self.blob))  # type: ignore[attr-defined]


@pytest.mark.parametrize("direction", ["server_sends", "client_sends"])
async def test_bulk_over_wss_to_a_silent_peer_does_not_stall(tmp_path: Path, direction: str) -> None:
    blob = os.urandom(SIZE)
    want = hashlib.sha256(blob).hexdigest()
    Download.blob = blob
    handler = Upload if direction == "server_sends" else Download
    async with wss_pair(tmp_path, handler) as (edge, accepted):
        got = Sink()
        stream = edge.open_stream(Address("IPv4", "127.0.0.9", "4000"), got, service="tcp", serviceport=1)
        started = time.monotonic()
        async with asyncio.timeout(BOUND):
            if direction == "server_sends":
                await pump(stream, blob)
                while not accepted:
                    await asyncio.sleep(0.01)
                digest = await accepted[0].wait(SIZE)  # type: ignore[attr-defined]
            else:
                stream.write(b"go")
                digest = await got.wait(SIZE)
        elapsed = time.monotonic() - started
        assert digest == want, f"{direction}: corrupted after {elapsed:.1f} s"


async def test_a_peer_that_stops_reading_leaves_at_most_a_batch_in_the_tls_layer(tmp_path: Path) -> None:
    """Bytes the SSL layer holds are past the multiplexer's fair scheduler: an interactive frame queues
    behind them. When the peer stops reading, the writer must stop with about one batch there, not the
    SSL transport's default 512 KiB (what an SSL transport left at its defaults holds here)."""
    async with wss_pair(tmp_path, Sink) as (edge, _accepted):
        stream = edge.open_stream(Address("IPv4", "127.0.0.9", "4002"), Sink(), service="tcp", serviceport=1)
        stream.write(b"hello")
        async with asyncio.timeout(5):
            while Seen.side_ws is None or Seen.edge_ws is None:
                await asyncio.sleep(0.01)
        side = transport_of(Seen.side_ws)
        assert side is not None
        side.pause_reading()  # the peer stops reading
        feeder = asyncio.ensure_future(pump(stream, os.urandom(64 << 20)))
        last, still = -1, 0
        async with asyncio.timeout(BOUND):
            while still < 10:  # the writer has been blocked for 10 polls in a row
                await asyncio.sleep(0.02)
                still = still + 1 if edge.bytes_sent == last else 0
                last = edge.bytes_sent
        edge_transport = transport_of(Seen.edge_ws)
        assert edge_transport is not None
        held = edge_transport.get_write_buffer_size()
        feeder.cancel()
        side.resume_reading()
        assert held <= edge.limits.batch_size + 4096, held
