"""A drain (SIGTERM) does not wait out UDP idle timers: UDP clients have no end of their own, so once a
role drains they are ended after DRAIN_IDLE of silence, while one still talking keeps its stream."""

from __future__ import annotations

import asyncio
import time

import pytest

from mproxy.edge.udp import DRAIN_IDLE

from .harness import Stack

pytestmark = pytest.mark.e2e


async def test_the_edge_drains_udp_clients_once_they_are_quiet(stack: Stack) -> None:
    listener, _ = await stack.start_echo(drain=20)  # idle timeout 30 s, drain 20 s
    quiet, talking = await stack.client(listener.port), await stack.client(listener.port)
    assert await quiet.ask(b"q") == b"q"
    assert await talking.ask(b"t") == b"t"
    assert stack.edge is not None
    started = time.monotonic()
    drain = asyncio.create_task(stack.edge.drain())
    for i in range(3):  # the talking client keeps being served while the edge drains
        await asyncio.sleep(DRAIN_IDLE / 4)
        assert await talking.ask(b"%d" % i) == b"%d" % i
    await asyncio.wait_for(drain, 10)
    took = time.monotonic() - started
    assert took < 3 * DRAIN_IDLE + 2, f"the edge's drain took {took:.1f} s"


async def test_the_sidecar_drains_udp_clients_once_they_are_quiet(stack: Stack) -> None:
    listener, _ = await stack.start_echo(drain=20, listener={"idleTimeoutSeconds": 60})
    c = await stack.client(listener.port)
    assert await c.ask(b"x") == b"x"
    assert stack.sidecar is not None and stack.sidecar_streams() == 1
    started = time.monotonic()
    await asyncio.wait_for(stack.sidecar.shutdown(), 10)
    took = time.monotonic() - started
    assert took < DRAIN_IDLE + 2, f"the sidecar's shutdown took {took:.1f} s"
