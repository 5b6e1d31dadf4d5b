"""forward.splice on real loopback sockets: bytes both ways, half-close passed on, one idle timeout for the
pair, and a reset on one side is passed on as a reset."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from mproxy.edge.forward import splice
from mproxy.sockwatch import reset

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _pair() -> tuple[Pair, Pair, asyncio.Server]:
    """(our end, the far end) of one loopback connection."""
    accepted: asyncio.Future[Pair] = asyncio.get_running_loop().create_future()
    server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
    near = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    return near, await accepted, server


@pytest.fixture
async def wired() -> AsyncIterator[tuple[Pair, Pair, Pair, Pair]]:
    """client <-> (a) splice (b) <-> upstream."""
    client, a, s1 = await _pair()
    b, upstream, s2 = await _pair()
    yield client, a, b, upstream
    for server in (s1, s2):
        server.close()
    for _, w in (client, a, b, upstream):
        w.close()


async def test_bytes_both_ways_and_half_close(wired: tuple[Pair, Pair, Pair, Pair]) -> None:
    client, a, b, upstream = wired
    task = asyncio.ensure_future(splice(*a, *b, high_water=65536, idle=10))
    client[1].write(b"x" * 300_000)
    client[1].write_eof()
    got = await asyncio.wait_for(upstream[0].read(), 5)  # until the EOF passed on
    assert got == b"x" * 300_000
    upstream[1].write(b"answer")
    upstream[1].write_eof()
    assert await asyncio.wait_for(client[0].read(), 5) == b"answer"
    await asyncio.wait_for(task, 5)


async def test_idle_pair_is_cut(wired: tuple[Pair, Pair, Pair, Pair]) -> None:
    client, a, b, upstream = wired
    started = time.monotonic()
    task = asyncio.ensure_future(splice(*a, *b, high_water=65536, idle=0.3))
    client[1].write(b"hi")
    assert await asyncio.wait_for(upstream[0].readexactly(2), 5) == b"hi"
    await asyncio.wait_for(task, 5)
    assert 0.3 <= time.monotonic() - started < 3
    with pytest.raises(ConnectionResetError):  # cut, not ended: the client must not take it for whole
        await asyncio.wait_for(client[0].read(), 5)


async def test_a_reset_aborts_the_other_side(wired: tuple[Pair, Pair, Pair, Pair]) -> None:
    client, a, b, upstream = wired
    task = asyncio.ensure_future(splice(*a, *b, high_water=65536, idle=10))
    client[1].write(b"hi")
    assert await asyncio.wait_for(upstream[0].readexactly(2), 5) == b"hi"
    reset(client[1].transport)  # RST, not FIN: the pair must not wait for the upstream's answer
    await asyncio.wait_for(task, 5)
    # Passed on as a reset too: a FIN would let the far side take a cut stream for a whole one.
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(upstream[0].read(), 5)
