"""mproxy.sockwatch on real loopback sockets: the TCP state of a peer we are not reading, and RST on close."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import cast

from mproxy.sockwatch import PausedWatch, peer_state, reset


async def _pair() -> tuple[socket.socket, asyncio.Transport, asyncio.Server]:
    got: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    peer = socket.create_connection(server.sockets[0].getsockname()[:2])
    writer = await asyncio.wait_for(got, 5)
    transport = cast(asyncio.Transport, writer.transport)  # typeshed says WriteTransport
    transport.pause_reading()  # the situation the watch is for
    return peer, transport, server


async def _until(pred, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


async def test_peer_state_open_fin_reset() -> None:
    peer, transport, server = await _pair()
    try:
        assert peer_state(transport) == "open"
        peer.shutdown(socket.SHUT_WR)
        await _until(lambda: peer_state(transport) == "fin")
    finally:
        peer.close()
        transport.abort()
        server.close()
    peer, transport, server = await _pair()
    try:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        await _until(lambda: peer_state(transport) == "reset")
    finally:
        transport.abort()
        server.close()


async def test_paused_watch_calls_back_and_reset_sends_rst() -> None:
    peer, transport, server = await _pair()
    seen: list[str] = []
    watch = PausedWatch(transport, on_reset=lambda: seen.append("reset"), on_fin=lambda: seen.append("fin"),
                        interval=0.05)
    try:
        watch.start()
        await asyncio.sleep(0.2)
        assert (seen, watch.active) == ([], True)  # still open: polling on
        peer.shutdown(socket.SHUT_WR)
        await _until(lambda: seen == ["fin"])
        assert not watch.active  # the owner decides what happens next
        reset(transport)
        await asyncio.sleep(0.1)  # the transport closes its socket on the next loop turns
        peer.settimeout(2)
        try:
            data = peer.recv(1)
        except ConnectionResetError:
            data = None
        assert data is None, "the peer got a clean EOF instead of a reset"
    finally:
        watch.stop()
        peer.close()
        server.close()
