"""Issue 10 item 7: a peer that leaves while its reads are paused is noticed at once, not at the 900 s idle
timeout; and item 8: a backend failure after data reached the client reaches it as a reset.
Real `mproxy edge` / `mproxy sidecar` processes."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from mproxy.tunnel.mux import Stream, StreamEnd, StreamHandler

from .harness import HostileEdge, HostileTunnel, Proc, start_edge, start_sidecar

pytestmark = pytest.mark.e2e


class _Pauser(StreamHandler):
    """Takes the first bytes, then sends `pause` for the client (as a sidecar with a slow backend does)."""

    def __init__(self, stream: Stream, *, reply: bytes = b"") -> None:
        self.stream = stream
        self.reply = reply
        self.got = 0
        self.eof = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.reason: str | None = None

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if not self.stream.reading_paused:
            self.stream.pause_reading()
            if self.reply:
                self.stream.write(self.reply)

    def eof_received(self) -> None:
        if not self.eof.done():
            self.eof.set_result(None)

    def stream_closed(self, end: StreamEnd) -> None:
        self.reason = None if end.clean else str(end)
        if not self.closed.done():
            self.closed.set_result(None)


def _linger0(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _paused_client(edge: Proc, handlers: list[_Pauser], *, fill: bool = True) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", edge.listener("tcp")))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, b"x" * 1024)
    async with asyncio.timeout(5):
        while not handlers or not handlers[0].got:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # the tunnel's pause has reached the edge: it no longer reads this client
    if not fill:
        await loop.sock_sendall(sock, b"z" * 1024)  # waits, unread, in the edge's receive buffer
        return sock
    # fill the edge's socket buffers, so it really stops reading this client (tcp listener: no sniff)
    chunk = b"y" * 65536
    try:
        async with asyncio.timeout(1.5):
            while True:
                await loop.sock_sendall(sock, chunk)
    except TimeoutError:
        pass
    return sock


async def _edge_and_tunnel(tmp_path, stack, reply: bytes = b"") -> tuple[Proc, list[_Pauser]]:  # type: ignore[no-untyped-def]
    edge = await start_edge(tmp_path)
    stack.push_async_callback(edge.stop)
    handlers: list[_Pauser] = []

    def on_stream(stream: Stream) -> StreamHandler:
        handlers.append(_Pauser(stream, reply=reply))
        return handlers[-1]

    tunnel = await HostileTunnel(edge, on_stream).start()
    stack.push_async_callback(tunnel.close)
    return edge, handlers


async def test_edge_notices_a_paused_client_that_resets(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    edge, handlers = await _edge_and_tunnel(tmp_path, stack)
    base = edge.fds()
    sock = await _paused_client(edge, handlers)
    assert edge.fds() == base + 1
    _linger0(sock)
    sock.close()  # RST
    await asyncio.wait_for(asyncio.shield(handlers[0].closed), 4)  # before: open until the idle timeout
    assert handlers[0].reason is not None and "E_CLIENT" in handlers[0].reason
    async with asyncio.timeout(2):
        while edge.fds() > base:
            await asyncio.sleep(0.05)


async def test_edge_reads_a_paused_clients_fin_through_to_the_tunnel(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    edge, handlers = await _edge_and_tunnel(tmp_path, stack)
    # (a FIN queued behind a full receive window is not sent at all, so the window is left open here)
    sock = await _paused_client(edge, handlers, fill=False)
    await asyncio.sleep(0.3)
    assert handlers[0].got == 1024
    sock.shutdown(socket.SHUT_WR)  # FIN: done sending, still waiting for the answer
    await asyncio.wait_for(asyncio.shield(handlers[0].eof), 4)  # before: never, while paused
    assert handlers[0].got == 2048  # the bytes before the FIN, in order
    assert not handlers[0].closed.done()  # a half-close, not an error: the answer may still come
    sock.close()


async def test_sidecar_notices_a_paused_backend_that_resets(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    resets: list[asyncio.StreamWriter] = []
    go = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"b" * 65536
        try:
            async with asyncio.timeout(1.5):
                while True:  # fill the sidecar's socket until it stops reading us
                    writer.write(chunk)
                    await writer.drain()
        except TimeoutError:
            pass
        resets.append(writer)
        await go.wait()
        _linger0(writer.get_extra_info("socket"))
        writer.transport.abort()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    stack.callback(server.close)
    edge = await HostileEdge().start()
    stack.push_async_callback(edge.close)
    sidecar = await start_sidecar(tmp_path, edge.port, server.sockets[0].getsockname()[1])
    stack.push_async_callback(sidecar.stop)
    await asyncio.wait_for(edge.connected.wait(), 20)
    handlers: list[_Pauser] = []

    def make(stream: Stream) -> _Pauser:
        handlers.append(_Pauser(stream))
        return handlers[-1]

    stream = edge.open(0, make)
    stream.write(b"hello")
    async with asyncio.timeout(10):
        while not resets:
            await asyncio.sleep(0.05)
    go.set()
    await asyncio.wait_for(asyncio.shield(handlers[0].closed), 4)  # before: open until the idle timeout
    assert handlers[0].reason is not None and "ECONNRESET" in handlers[0].reason


async def test_backend_failure_after_data_resets_the_client(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    edge, handlers = await _edge_and_tunnel(tmp_path, stack, reply=b"partial answer")
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.listener("tcp"))
    writer.write(b"request")
    assert await asyncio.wait_for(reader.readexactly(14), 5) == b"partial answer"
    handlers[0].stream.abort("backend 10.0.0.9:80 reset", "ECONNRESET")  # what a sidecar sends
    with pytest.raises(ConnectionResetError):  # before: a clean EOF, a truncated answer looked whole
        await asyncio.wait_for(reader.read(), 5)
    writer.close()
