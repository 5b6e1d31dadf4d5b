"""mproxy.edge.splice on real loopback sockets: bytes both ways, half-close passed on, the write-buffer bound,
one idle timeout for the pair, and a reset on one side is passed on as a reset."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest
from tests.conftest import LOOPS, loop_policy

from mproxy.edge.splice import Splice
from mproxy.sockwatch import reset

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(params=LOOPS)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """On both loops the edge may run on: uvloop's transports start reading after connection_made even
    when the protocol paused them inside it, asyncio's do not."""
    return loop_policy(request.param)


class _Held(asyncio.Protocol):
    """A transport's protocol until the Splice takes it over."""

    def __init__(self) -> None:
        self.made: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        t.pause_reading()  # as the edge does until the splice starts
        self.made.set_result(t)


async def _accepted() -> tuple[Pair, asyncio.Transport, asyncio.Server]:
    """(a stream client, the transport the server accepted for it, the server)."""
    held = _Held()
    server = await asyncio.get_running_loop().create_server(lambda: held, "127.0.0.1", 0)
    near = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    return near, await held.made, server


async def _dialled(server_side: asyncio.Future[Pair]) -> tuple[asyncio.Transport, asyncio.Server]:
    server = await asyncio.start_server(lambda r, w: server_side.set_result((r, w)), "127.0.0.1", 0)
    transport, _ = await asyncio.get_running_loop().create_connection(
        _Held, "127.0.0.1", server.sockets[0].getsockname()[1])
    return transport, server


Wired = tuple[Pair, Pair, Callable[..., "asyncio.Future[str]"]]


@pytest.fixture
async def wired() -> AsyncIterator[Wired]:
    """client <-> (a) Splice (b) <-> upstream; start(**kw) starts the splice, its future is on_done's."""
    client, a, s1 = await _accepted()
    upstream_f: asyncio.Future[Pair] = asyncio.get_running_loop().create_future()
    b, s2 = await _dialled(upstream_f)
    upstream = await upstream_f

    def start(high_water: int = 65536, idle: float = 10, first: bytes = b"") -> asyncio.Future[str]:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        Splice(a, b, high_water=high_water, idle=idle, on_done=done.set_result, a_first=first)
        return done

    yield client, upstream, start
    for server in (s1, s2):
        server.close()
    for _, w in (client, upstream):
        w.close()
    a.abort()
    b.abort()


async def test_bytes_both_ways_and_half_close(wired: Wired) -> None:
    client, upstream, start = wired
    done = start(first=b"ack-rest:")
    client[1].write(b"x" * 300_000)
    client[1].write_eof()
    got = await asyncio.wait_for(upstream[0].read(), 5)  # until the EOF passed on
    assert got == b"x" * 300_000
    upstream[1].write(b"answer")
    upstream[1].write_eof()
    assert await asyncio.wait_for(client[0].read(), 5) == b"ack-rest:answer"
    assert await asyncio.wait_for(done, 5) == "ok"


async def test_a_slow_reader_pauses_the_other_side(wired: Wired) -> None:
    client, upstream, start = wired
    done = start(high_water=65536)
    # The upstream does not read: the splice stops reading the client once its buffer is full, so the
    # client's own send buffer fills and its drain() blocks instead of the edge buffering everything.
    blob = b"y" * (64 * 1024 * 1024)
    client[1].write(blob)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client[1].drain(), 1.0)
    assert not done.done()
    got = 0
    while got < len(blob):  # and everything arrives once the upstream reads
        chunk = await asyncio.wait_for(upstream[0].read(1 << 20), 5)
        assert chunk
        got += len(chunk)
    assert got == len(blob)


async def test_idle_pair_is_cut(wired: Wired) -> None:
    client, upstream, start = wired
    started = time.monotonic()
    done = start(idle=0.3)
    client[1].write(b"hi")
    assert await asyncio.wait_for(upstream[0].readexactly(2), 5) == b"hi"
    assert await asyncio.wait_for(done, 5) == "reset"
    assert 0.3 <= time.monotonic() - started < 3
    with pytest.raises(ConnectionResetError):  # cut, not ended: the client must not take it for whole
        await asyncio.wait_for(client[0].read(), 5)


async def test_a_reset_aborts_the_other_side(wired: Wired) -> None:
    client, upstream, start = wired
    done = start()
    client[1].write(b"hi")
    assert await asyncio.wait_for(upstream[0].readexactly(2), 5) == b"hi"
    reset(client[1].transport)  # type: ignore[arg-type]  # RST, not FIN: do not wait for the answer
    assert await asyncio.wait_for(done, 5) == "reset"
    # Passed on as a reset too: a FIN would let the far side take a cut stream for a whole one.
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(upstream[0].read(), 5)
