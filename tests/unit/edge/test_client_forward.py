"""EdgeClient handing itself to a peer edge (router.open raises Forwarding), over a real loopback socket: a
raw TCP client routed from connection_made loses no byte it sends while the peer has not answered (they
reach the peer after the forward's first bytes, then the pipe runs both ways), and a forward no peer takes
is refused as usual and frees the client's admission."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tests.conftest import LOOPS, loop_policy
from tests.unit.edge.test_client import _until

from mproxy.buffers import BufferRule
from mproxy.config.edge import ListenerConfig
from mproxy.edge.client import EdgeClient, Tunnel
from mproxy.edge.limits import ClientLimiter
from mproxy.edge.listener import PublicListener
from mproxy.edge.refusal import Forwarding, Refused
from mproxy.edge.splice import Splice
from mproxy.tunnel.mux import Stream

NO_TUNNEL = Refused("no_tunnel", "no tunnel is connected for port 5050")


@pytest.fixture(params=LOOPS)
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """On both loops the edge may run on: uvloop's transports start reading after connection_made even
    when the protocol paused them inside it, asyncio's do not."""
    return loop_policy(request.param)


class _Router:
    """A relay with no tunnel and a peer that may take every client: forward() only records it."""

    stream_buffer = 1 << 20
    buffer_rule = BufferRule()

    def __init__(self) -> None:
        self.forwarded: list[EdgeClient] = []
        self.rejects: list[str] = []

    def open(self, client: EdgeClient) -> Stream:
        raise Forwarding(NO_TUNNEL, [])

    def forward(self, client: EdgeClient, signal: Forwarding) -> None:
        assert signal.refusal is NO_TUNNEL
        self.forwarded.append(client)

    def refused(self, client: EdgeClient, tunnel: Tunnel, code: str) -> None:
        raise AssertionError("no retry expected")

    def done(self, client: EdgeClient, result: str) -> None:
        raise AssertionError("a forwarded client is never relayed here")

    def rejected(self, kind: str, reason: str) -> None:
        self.rejects.append(reason)

    def buffer_cut(self, limit: str) -> None:
        raise AssertionError("no cut expected")


@pytest.fixture
async def wired() -> AsyncIterator[tuple[_Router, ClientLimiter, PublicListener]]:
    router, limiter = _Router(), ClientLimiter(max_open=10, rate=100.0, burst=100)
    listener = PublicListener(ListenerConfig("tcp", "127.0.0.1:0", public_port=5050), router=router,
                              limiter=limiter)
    await listener.start()
    yield router, limiter, listener
    await listener.close()


class _Held(asyncio.Protocol):
    """The dialled upstream's protocol until the Splice takes it (as forward._Dial after the ACK)."""


async def test_bytes_sent_before_the_peer_answers_all_reach_it(
        wired: tuple[_Router, ClientLimiter, PublicListener]) -> None:
    router, limiter, listener = wired
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"first line\n")  # the client is routed (and forwarding) from connection_made
    await _until(lambda: bool(router.forwarded), "the hand-over")
    client = router.forwarded[0]
    sent = client.read_so_far()  # what the forwarder sends after the PROXY header
    writer.write(b"second line\n")
    writer.write_eof()
    await asyncio.sleep(0.2)  # the peer takes its time to answer
    assert limiter.open_count("127.0.0.1") == 1 and not len(listener.front.pending)
    # The peer says ACK: pipe the client to it as Peering does.
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future())
    peer = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
    upstream, _ = await asyncio.get_running_loop().create_connection(
        _Held, "127.0.0.1", peer.sockets[0].getsockname()[1])
    peer_reader, peer_writer = await accepted
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    assert client.transport is not None
    Splice(client.transport, upstream, high_water=65536, idle=10, on_done=ended.set_result,
           b_first=client.read_so_far(len(sent)), a_ended=client.client_ended)
    # Before: the first line was dropped (asyncio's transport reads right after connection_made even
    # when paused inside it, and _FORWARDING discarded what it read).
    assert sent + await asyncio.wait_for(peer_reader.read(), 5) == b"first line\nsecond line\n"
    peer_writer.write(b"answer")
    peer_writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b"answer"
    assert await asyncio.wait_for(ended, 5) == "ok"
    client.forward_ended()  # the pipe ended: the admission goes, once
    client.forward_ended()
    assert limiter.open_count("127.0.0.1") == 0
    writer.close()
    peer_writer.close()
    peer.close()


async def test_a_forward_no_peer_takes_is_refused_and_released(
        wired: tuple[_Router, ClientLimiter, PublicListener]) -> None:
    router, limiter, listener = wired
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"hello\n")
    await _until(lambda: bool(router.forwarded), "the hand-over")
    router.forwarded[0].forward_refused(NO_TUNNEL)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # a raw TCP refusal: the close
    assert router.rejects == ["no_tunnel"] and limiter.open_count("127.0.0.1") == 0
    writer.close()
