"""A client's datagram that arrives while its previous stream is still ending (the edge ended it, the `end`
is queued but not yet written) waits for that stream to go, then opens the next one: M-PROXY names a stream
by address and port alone, so the two may not overlap on a tunnel, but the datagram is not lost."""

from __future__ import annotations

import pytest

from .harness import Stack, sample, until

pytestmark = pytest.mark.e2e


async def test_a_datagram_while_the_clients_previous_stream_ends_opens_the_next_one(stack: Stack) -> None:
    listener, echo = await stack.start_echo()
    c = await stack.client(listener.port)
    assert await c.ask(b"one") == b"one"
    (old,) = listener.clients.values()
    assert old.stream is not None and c.transport is not None
    mux, peer = old.stream.mux, c.transport.get_extra_info("sockname")
    opened = mux.streams_opened
    # Its idle timer fires, and before the sidecar's `end` is back (here: before the tunnel writer has
    # even run) the client sends again: the old stream still holds the client's id on the only tunnel.
    old.last_active -= 3600
    old.check_idle()
    assert not listener.clients and old.stream.client_id in mux.streams
    listener.from_client(b"two", peer)
    assert await c.recv() == b"two"
    reg = stack.edge.metrics.registry  # type: ignore[union-attr]
    assert sample(reg, "mproxy_edge_udp_dropped_total", {"reason": "client_id_in_use"}) == 0
    assert mux.streams_opened == opened + 1 and len(listener.clients) == 1 and echo.received == 2
    assert await c.ask(b"three") == b"three"  # on the new stream


async def test_datagrams_held_for_an_ending_stream_are_bounded(stack: Stack) -> None:
    listener, echo = await stack.start_echo()
    c = await stack.client(listener.port)
    assert await c.ask(b"one") == b"one"
    (old,) = listener.clients.values()
    assert c.transport is not None
    peer = c.transport.get_extra_info("sockname")
    old.last_active -= 3600
    old.check_idle()
    for i in range(100):
        listener.from_client(b"%d" % i, peer)
    got = sorted([int(await c.recv()) for _ in range(16)])
    assert got == list(range(16))  # the first 16 waited and went, in one new stream
    reg = stack.edge.metrics.registry  # type: ignore[union-attr]
    await until(lambda: echo.received == 17, 5, "the echoes")
    assert sample(reg, "mproxy_edge_udp_dropped_total", {"reason": "client_id_in_use"}) == 84
    assert len(listener.clients) == 1
