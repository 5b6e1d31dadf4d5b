"""M-PROXY names a client stream by `family,address,port` only. One client address and port can hold two
connections at once (to two public ports), which would name two streams alike on one tunnel: the second
must go to another tunnel or be refused in its own protocol, never crash the edge or disturb the first."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from tests.ports import free_port

from .harness import TCP_PUBLIC_PORT, ports, token, tunnel_url

pytestmark = pytest.mark.e2e


async def connect_from(local_port: int, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", local_port))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), 5)


async def test_second_connection_from_the_same_client_port(parts, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING)
    relay = await parts.edge()
    back = await parts.backends(["app.test"])
    dev = parts.device(tunnel_url(relay), token(["app.test"], [TCP_PUBLIC_PORT]),
                       names={"web.app.test": back.http_port}, tcp={TCP_PUBLIC_PORT: back.echo_port})
    await dev.start()
    p = ports(relay)
    local = free_port()

    first = await connect_from(local, p["tcp"])
    assert await echo_once(*first, b"first") == b"first"

    # Same client address and port, other public port: the one tunnel already carries that client id.
    reader, writer = await connect_from(local, p["http"])
    writer.write(b"GET / HTTP/1.1\r\nHost: web.app.test\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert b"X-Mproxy-Reason: client_id_in_use" in answer
    writer.close()

    # The first stream is untouched and the edge logged no traceback.
    assert await echo_once(*first, b"still here") == b"still here"
    first[1].close()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]

