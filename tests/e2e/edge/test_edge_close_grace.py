"""A client that does not take the rest of a finished answer within CLOSE_GRACE is cut off with a reset,
not a FIN: what it has read is truncated and must not look whole. In-process edge (the grace shortened),
a tunnel built on the tunnel core, a real client socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp
import pytest

from mproxy.edge import client
from mproxy.tunnel.mux import Multiplexer, MuxLimits, Stream, StreamEnd, StreamHandler
from mproxy.tunnel.ws import Heartbeat, run_tunnel

from .harness import TCP_PUBLIC_PORT, Parts, ports, token, tunnel_url

pytestmark = pytest.mark.e2e

ANSWER = 6 * 1024 * 1024  # past what loopback kernel buffers hold, under bufferSoftBytes


class _Answer(StreamHandler):
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.stream.write(b"a" * ANSWER)

    def eof_received(self) -> None:
        self.stream.write_eof()  # the answer is complete

    def stream_closed(self, end: StreamEnd) -> None:
        if not self.closed.done():
            self.closed.set_result(end)


async def test_a_client_that_leaves_its_answer_unread_is_reset_after_the_grace(
        parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "CLOSE_GRACE", 0.5)
    relay = await parts.edge()
    handlers: list[_Answer] = []

    def on_stream(stream: Stream) -> StreamHandler:
        handlers.append(_Answer(stream))
        return handlers[-1]

    session = aiohttp.ClientSession()
    parts.later(session.close)
    ws = await session.ws_connect(f"{tunnel_url(relay)}?access_token={token(ports_=[TCP_PUBLIC_PORT])}",
                                  autoping=False, max_msg_size=0)
    mux = Multiplexer(on_stream=on_stream, on_control=lambda value: None,
                      limits=MuxLimits(max_frame_bytes=4 << 20), name="answers")
    stop = asyncio.Event()
    task = asyncio.ensure_future(run_tunnel(ws, mux, heartbeat=Heartbeat(1, 5), stop=stop))

    async def close_tunnel() -> None:
        stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 3)

    parts.later(close_tunnel)
    await asyncio.sleep(0.3)  # the grant is registered

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    parts.stack.callback(sock.close)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", ports(relay)["tcp"]))
    await loop.sock_sendall(sock, b"request")
    sock.shutdown(socket.SHUT_WR)  # done sending: the stream ends cleanly once the answer's `end` comes
    async with asyncio.timeout(5):
        while not handlers:
            await asyncio.sleep(0.01)
    assert (await asyncio.wait_for(asyncio.shield(handlers[0].closed), 5)).clean
    await asyncio.sleep(1.0)  # past the grace, most of the answer still unread
    got = 0
    with pytest.raises(ConnectionResetError):  # before: a FIN after part of the answer
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(sock, 65536):
                got += len(chunk)
    assert got < ANSWER
