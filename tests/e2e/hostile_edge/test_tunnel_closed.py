"""A client whose tunnel goes away: mid-answer it must see a reset (a truncated answer must never look
whole, as for a backend failure after data); after the sidecar's `end` it gets the whole answer, flushed,
and a clean FIN. Real `mproxy edge` process, a tunnel built on the tunnel core."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mproxy.tunnel.mux import Stream, StreamHandler

from .harness import HostileTunnel, Proc, start_edge

pytestmark = pytest.mark.e2e

ANSWER = 6 * 1024 * 1024  # past what the kernel buffers hold (~1 MB on loopback), under bufferSoftBytes


class _Answer(StreamHandler):
    """Answers the first bytes with `size` bytes, then `end` if `finish`."""

    def __init__(self, stream: Stream, size: int, finish: bool) -> None:
        self.stream = stream
        self.size = size
        self.finish = finish
        self.answered = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.answered.done():
            self.stream.write(b"a" * self.size)
            if self.finish:
                self.stream.write_eof()
            self.answered.set_result(None)


async def _setup(tmp_path, stack, size: int, finish: bool) -> tuple[Proc, HostileTunnel, list[_Answer]]:  # type: ignore[no-untyped-def]
    edge = await start_edge(tmp_path)
    stack.push_async_callback(edge.stop)
    handlers: list[_Answer] = []

    def on_stream(stream: Stream) -> StreamHandler:
        handlers.append(_Answer(stream, size, finish))
        return handlers[-1]

    tunnel = await HostileTunnel(edge, on_stream).start()
    stack.push_async_callback(tunnel.close)
    return edge, tunnel, handlers


async def _client(edge: Proc) -> socket.socket:
    """A client that sends a request and, with a small receive buffer, does not read yet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", edge.listener("tcp")))
    await loop.sock_sendall(sock, b"request")
    return sock


async def _read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    async with asyncio.timeout(10):
        while chunk := await loop.sock_recv(sock, 65536):
            got += chunk
    return bytes(got)


async def test_tunnel_closing_mid_answer_resets_the_client(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    edge, tunnel, handlers = await _setup(tmp_path, stack, 64 * 1024, finish=False)
    sock = await _client(edge)
    stack.callback(sock.close)
    async with asyncio.timeout(5):
        while not handlers:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.shield(handlers[0].answered), 5)
    await asyncio.sleep(0.3)  # the partial answer reached the edge
    await tunnel.close()
    # before: a clean FIN after part of the answer (the "tunnel closed" branch closed the socket)
    with pytest.raises(ConnectionResetError):
        await _read_all(sock)


async def test_tunnel_closing_after_the_end_flushes_the_whole_answer(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    edge, tunnel, handlers = await _setup(tmp_path, stack, ANSWER, finish=True)
    sock = await _client(edge)
    stack.callback(sock.close)
    async with asyncio.timeout(5):
        while not handlers:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.shield(handlers[0].answered), 5)
    await asyncio.sleep(0.5)  # the answer and its `end` reached the edge; most of it waits there
    await tunnel.close()
    await asyncio.sleep(0.3)
    # the answer was complete: all of it, then a clean EOF (before: the bytes still queued were dropped)
    assert len(await _read_all(sock)) == ANSWER
