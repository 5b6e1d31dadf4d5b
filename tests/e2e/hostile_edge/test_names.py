"""Issue 10 item 8, on a real `mproxy edge` process: a trailing-dot Host routes as the name without it,
and `Host : x` (whitespace before the colon) is refused with 400 instead of being forwarded to a backend
that would see no Host at all."""

from __future__ import annotations

import asyncio

import pytest

from mproxy.tunnel.mux import Stream, StreamHandler

from .harness import HostileTunnel, start_edge, token

pytestmark = pytest.mark.e2e


class _Named(StreamHandler):
    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    def data_received(self, data: bytes) -> None:
        body = f"name={self.stream.name}".encode()
        self.stream.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (len(body), body))
        self.stream.write_eof()


async def _ask(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_trailing_dot_and_spaced_host(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    edge = await start_edge(tmp_path, listeners=[{"kind": "http", "listen": "127.0.0.1:0"}])
    stack.push_async_callback(edge.stop)
    tunnel = await HostileTunnel(edge, _Named, token([], ["app.test"])).start()
    stack.push_async_callback(tunnel.close)
    port = edge.listener("http")
    answer = await _ask(port, b"GET / HTTP/1.1\r\nHost: app.test.\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"name=app.test"), answer
    answer = await _ask(port, b"GET / HTTP/1.1\r\nHost : app.test\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"X-Mproxy-Reason: no_name" in answer, answer
