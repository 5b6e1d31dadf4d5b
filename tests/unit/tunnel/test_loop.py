"""mproxy.tunnel.loop: the roles' CLI entry points run on uvloop when installed, on asyncio on request."""

from __future__ import annotations

import asyncio

import pytest
from tests.conftest import need

from mproxy.tunnel.loop import loop_factory, loop_name, run


async def _echo_once() -> tuple[str, bytes]:
    """A real loopback TCP echo on the running loop; returns the loop's class name and the echo."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        got = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
    return type(asyncio.get_running_loop()).__module__, got


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        need(False, "uvloop (a dependency on Linux: pip install -e .)")
    monkeypatch.delenv("MPROXY_EVENT_LOOP", raising=False)
    assert loop_name() == "uvloop"
    module, got = run(_echo_once())
    assert module.startswith("uvloop") and got == b"ping"


def test_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPROXY_EVENT_LOOP", " AsyncIO ")
    assert loop_factory() is None and loop_name() == "asyncio"
    module, got = run(_echo_once())
    assert module.startswith("asyncio") and got == b"ping"
