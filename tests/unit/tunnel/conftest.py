"""A real loopback WebSocket pair with a Multiplexer on each end ("edge" opens, "side" accepts)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from tests.conftest import LOOPS, loop_policy, serve_app

from mproxy.codec import Address
from mproxy.tunnel import (
    Heartbeat,
    Multiplexer,
    MuxLimits,
    Stream,
    StreamEnd,
    StreamHandler,
    TunnelClose,
    run_tunnel,
)


class Recorder(StreamHandler):
    """Collects what a stream's handler sees."""

    def __init__(self, stream: Stream | None = None) -> None:
        self.stream = stream
        self.data = bytearray()
        self.eof = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_reason: str | None = "not closed"
        self.error: tuple[str, str] | None = None
        self.pauses = 0
        self.resumes = 0
        self.got = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()

    def eof_received(self) -> None:
        self.eof.set()

    def error_received(self, message: str, code: str) -> None:
        self.error = (message, code)

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        self.resumes += 1

    def stream_closed(self, end: StreamEnd) -> None:
        self.close_reason = None if end.clean else str(end)
        self.closed.set()

    async def wait_bytes(self, n: int, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            while len(self.data) < n:
                self.got.clear()
                await self.got.wait()
        return bytes(self.data)


class Echo(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.stream is not None
        self.stream.write(data)

    def eof_received(self) -> None:
        super().eof_received()
        assert self.stream is not None
        self.stream.write_eof()


@dataclass
class Pair:
    edge: Multiplexer
    side: Multiplexer
    accepted: list[Recorder] = field(default_factory=list)
    edge_result: asyncio.Future[TunnelClose] | None = None
    side_result: asyncio.Future[TunnelClose] | None = None
    edge_ws: web.WebSocketResponse | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def open(self, port: int = 50000, **kw: str) -> tuple[Stream, Recorder]:
        rec = Recorder()
        stream = self.edge.open_stream(
            Address("IPv4", "10.0.0.1", str(port)), rec, service=kw.get("service", "tcp"),
            serviceport=kw.get("serviceport", "22"), name=kw.get("name", ""),
        )
        rec.stream = stream
        return stream, rec

    async def far_side(self, timeout: float = 5.0) -> tuple[Recorder, Stream]:
        """The first stream the far side accepted (waiting up to `timeout` s): its recorder and stream."""
        async with asyncio.timeout(timeout):
            while not self.accepted or self.accepted[0].stream is None:
                await asyncio.sleep(0.01)
        side = self.accepted[0]
        assert side.stream is not None
        return side, side.stream


PairFactory = Callable[..., contextlib.AbstractAsyncContextManager[Pair]]


@pytest.fixture
def tunnel_pair() -> PairFactory:
    @contextlib.asynccontextmanager
    async def make(
        handler: type[Recorder] = Echo,
        limits: MuxLimits | None = None,
        side_limits: MuxLimits | None = None,
        heartbeat: Heartbeat | None = None,
        implicit_open: bool = False,
    ) -> AsyncIterator[Pair]:
        edge_ready: asyncio.Future[Pair] = asyncio.get_running_loop().create_future()
        pair_box: list[Pair] = []

        async def ws_handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(autoping=False, max_msg_size=0)
            await ws.prepare(request)
            pair = await edge_ready
            pair.edge_ws = ws
            assert pair.edge_result is not None
            pair.edge_result.set_result(await run_tunnel(ws, pair.edge, heartbeat=heartbeat))
            return ws

        app = web.Application()
        app.router.add_get("/", ws_handler)
        runner, port = await serve_app(app)
        loop = asyncio.get_running_loop()

        def accept(stream: Stream) -> StreamHandler:
            rec = handler(stream)
            pair_box[0].accepted.append(rec)
            return rec

        pair = Pair(
            edge=Multiplexer(limits=limits, name="edge"),
            side=Multiplexer(on_stream=accept, limits=side_limits or limits, name="side",
                             implicit_open=implicit_open),
        )
        pair.edge_result = loop.create_future()
        pair.side_result = loop.create_future()
        pair_box.append(pair)
        edge_ready.set_result(pair)
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"http://127.0.0.1:{port}/", autoping=False, max_msg_size=0)

            async def side() -> None:
                assert pair.side_result is not None
                result = await run_tunnel(ws, pair.side, heartbeat=heartbeat, stop=pair.stop)
                pair.side_result.set_result(result)

            task = asyncio.ensure_future(side())
            try:
                yield pair
            finally:
                pair.stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 5)
                await runner.cleanup()

    return make



@pytest.fixture(params=LOOPS)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every async tunnel test runs on both loops the roles may use (mproxy.tunnel.loop picks uvloop
    when it is installed): the stdlib loop and uvloop, whose transports differ in buffering and types."""
    return loop_policy(request.param)
