"""EdgeClient's preamble and hand-over to a stream, over a real loopback socket and a Multiplexer with no
WebSocket (its frames are read with the codec): the PROXY header, the sniffed bytes and everything after
them reach the stream once and in order, whatever the segmentation; a refusal is answered and frees the
client's admission."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import AsyncIterator, Callable, Sized

import pytest

from mproxy import proxyproto
from mproxy.buffers import BufferRule
from mproxy.codec import Connection, End, Message, pack_data, pack_end, parse_all
from mproxy.config.edge import ListenerConfig
from mproxy.edge.client import EdgeClient, Tunnel
from mproxy.edge.limits import ClientLimiter
from mproxy.edge.listener import PublicListener
from mproxy.edge.refusal import Forwarding, Refused
from mproxy.tunnel.mux import Multiplexer, Stream

REQUEST = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\nbody after the head"


class _Router:
    """A relay with one tunnel: a Multiplexer whose frames the test reads."""

    stream_buffer = 1 << 20
    buffer_rule = BufferRule()

    def __init__(self, refuse: Refused | None = None) -> None:
        self.mux = Multiplexer(name="test tunnel")
        self.id, self.draining = 1, False
        self.refuse = refuse
        self.opened: list[EdgeClient] = []
        self.rejects: list[str] = []
        self.results: list[str] = []

    def open(self, client: EdgeClient) -> Stream:
        if self.refuse is not None:
            raise self.refuse
        self.opened.append(client)
        client.tunnel = self
        return self.mux.open_stream(client.addr, client.handler, service=client.service,
                                    serviceport=client.serviceport, name=client.name)

    def forward(self, client: EdgeClient, signal: Forwarding) -> None:
        raise AssertionError("no forward expected")

    def refused(self, client: EdgeClient, tunnel: Tunnel, code: str) -> None:
        raise AssertionError("no retry expected")

    def done(self, client: EdgeClient, result: str) -> None:
        self.results.append(result)

    def rejected(self, kind: str, reason: str) -> None:
        self.rejects.append(reason)

    def buffer_cut(self, limit: str) -> None:
        raise AssertionError("no cut expected")


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def limiter() -> ClientLimiter:
    return ClientLimiter(max_open=10, rate=100.0, burst=100)


async def _listener(router: _Router, limiter: ClientLimiter, *, kind: str = "http",
                    sniff_timeout: float = 5.0) -> AsyncIterator[PublicListener]:
    listener = PublicListener(ListenerConfig(kind, "127.0.0.1:0", proxy_protocol=True), router=router,
                              limiter=limiter, trusted=(ipaddress.ip_network("127.0.0.0/8"),),
                              sniff_timeout=sniff_timeout)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.close()


@pytest.mark.parametrize("cuts", [[], [5, 40, 60], list(range(1, 200))], ids=["whole", "3 cuts", "bytewise"])
async def test_preamble_bytes_reach_the_stream_once_in_order(limiter: ClientLimiter, cuts: list[int]) -> None:
    router = _Router()
    header = proxyproto.encode("v1", ("10.1.2.3", 40000), ("10.0.0.1", 80))
    wire = header + REQUEST
    async for listener in _listener(router, limiter):
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        start = 0
        for cut in [c for c in cuts if c < len(wire)] + [len(wire)]:
            writer.write(wire[start:cut])
            await writer.drain()
            await asyncio.sleep(0)
            start = cut
        writer.write_eof()
        await _until(lambda: bool(router.opened) and router.opened[0].client_ended, "the client's FIN")
        client = router.opened[0]
        assert (client.addr.address, client.addr.port, client.name) == ("10.1.2.3", "40000", "app.test")
        assert limiter.open_count("10.1.2.3") == 1  # admitted under the balancer's client, not 127.0.0.1
        frames: list[bytes | memoryview] = []
        while router.mux.has_pending_output():
            frames += router.mux.next_batch()
        events = parse_all(b"".join(frames))
        assert isinstance(events[0], Connection) and events[0].name == "app.test"
        assert b"".join(bytes(e.data) for e in events if isinstance(e, Message)) == REQUEST
        assert isinstance(events[-1], End)
        router.mux.feed(pack_data(client.addr, b"answer", service="http", serviceport=client.serviceport)
                        + pack_end(client.addr, serviceport=client.serviceport))
        assert await asyncio.wait_for(reader.read(), 5) == b"answer"  # then a FIN: the answer is whole
        await _until(lambda: bool(router.results), "the client to finish")
        assert router.results == ["ok"] and limiter.open_count("10.1.2.3") == 0
        writer.close()


async def test_a_refused_client_is_answered_and_released(limiter: ClientLimiter) -> None:
    router = _Router(refuse=Refused("no_tunnel", "no tunnel is connected for app.test"))
    async for listener in _listener(router, limiter):
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(proxyproto.encode("v1", ("10.1.2.3", 40000), ("10.0.0.1", 80)) + REQUEST)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 404 ") and b"X-Mproxy-Reason: no_tunnel" in answer
        assert router.rejects == ["no_tunnel"] and limiter.open_count("10.1.2.3") == 0
        writer.close()


async def test_a_silent_client_times_out_and_is_released(limiter: ClientLimiter) -> None:
    router = _Router()
    async for listener in _listener(router, limiter, sniff_timeout=0.2):
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(proxyproto.encode("v1", ("10.1.2.3", 40000), ("10.0.0.1", 80)) + b"GET / HT")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"X-Mproxy-Reason: sniff_timeout" in answer
        assert router.rejects == ["sniff_timeout"] and not router.opened
        assert limiter.open_count("10.1.2.3") == 0
        writer.close()


async def test_a_refusal_reaches_a_client_whose_request_is_still_arriving() -> None:
    """Admission is decided on the PROXY header, so the refusal goes out while the rest of the request
    (here a 1 MiB body) is still arriving. Closing then, with those bytes unread, makes the kernel reset
    the connection instead of a FIN, and the client's read fails with the answer in hand (before:
    ConnectionResetError). The edge sends FIN behind the answer and reads on until the client closes."""
    router = _Router()
    limiter = ClientLimiter(max_open=0, rate=100.0, burst=100)
    async for listener in _listener(router, limiter):
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        head = b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1048576\r\n\r\n"
        writer.write(proxyproto.encode("v1", ("10.1.2.3", 40000), ("10.0.0.1", 80)) + head + bytes(1 << 20))
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 429 "), answer
        assert router.rejects == ["too_many_connections"]
        writer.close()


class _Tunnel:
    def __init__(self, name: str) -> None:
        self.mux = Multiplexer(name=name)
        self.id, self.draining = id(self), False


class _TwoTunnels(_Router):
    """Opens on the first tunnel the client has not tried."""

    def __init__(self) -> None:
        super().__init__()
        self.tunnels = [_Tunnel("a"), _Tunnel("b")]
        self.refusals: list[str] = []

    def open(self, client: EdgeClient) -> Stream:
        for tunnel in self.tunnels:
            if id(tunnel) not in client.tried:
                self.opened.append(client)
                client.tunnel = tunnel
                return tunnel.mux.open_stream(client.addr, client.handler, service=client.service,
                                              serviceport=client.serviceport, name=client.name)
        raise Refused("tunnel_full", "every tunnel refused")

    def refused(self, client: EdgeClient, tunnel: Tunnel, code: str) -> None:
        self.refusals.append(code)


def _data_sent(mux: Multiplexer) -> bytes:
    frames: list[bytes | memoryview] = []
    while mux.has_pending_output():
        frames += mux.next_batch()
    return b"".join(bytes(e.data) for e in parse_all(b"".join(frames)) if isinstance(e, Message))


@pytest.mark.parametrize(("code", "replayed"), [("peer_closed", True), ("shutdown", False)])
async def test_a_fresh_stream_moves_only_when_the_peer_went_away(limiter: ClientLimiter, code: str,
                                                                 replayed: bool) -> None:
    """A sidecar closing its tunnel with 1001 may never have read our `connection`: a stream that fresh
    is replayed on another tunnel. Our own shutdown also closes with 1001, but nothing is left to move
    to: the client is let go. The decision reads StreamEnd's fields (code and close code)."""
    router = _TwoTunnels()
    async for listener in _listener(router, limiter):
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(proxyproto.encode("v1", ("10.1.2.3", 40000), ("10.0.0.1", 80)) + REQUEST)
        await _until(lambda: bool(router.opened), "the first stream")
        assert _data_sent(router.tunnels[0].mux) == REQUEST  # queued as the stream opened
        router.tunnels[0].mux.close(f"{code}: going away", code=code, close_code=1001)
        if replayed:
            await _until(lambda: len(router.opened) == 2, "the replay")
            assert router.refusals == ["tunnel closed"]
            assert _data_sent(router.tunnels[1].mux) == REQUEST  # the same bytes, on tunnel b
            writer.close()
        else:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # let go, nothing replayed
            await _until(lambda: bool(router.results), "the client to finish")
            assert router.results == ["tunnel_closed"] and len(router.opened) == 1
            writer.close()


async def test_a_sidecar_refusal_reaches_a_client_whose_request_is_still_arriving(
        limiter: ClientLimiter) -> None:
    """The sidecar refuses the stream (here E_NO_ROUTE, e.g. a weighted route's refuse share) while the
    request's body is still arriving: the 502 goes out, then FIN, and the edge reads on (counted as
    pending meanwhile) until the client closes, so the close is no reset that loses the answer."""
    from mproxy.codec import pack_error

    router = _Router()
    async for listener in _listener(router, limiter):
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        head = b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4194304\r\n\r\n"
        writer.write(proxyproto.encode("v1", ("10.1.2.3", 40000), ("10.0.0.1", 80)) + head)
        await _until(lambda: bool(router.opened), "the stream")
        client = router.opened[0]
        router.mux.feed(pack_error(client.addr, "route 'r' refuses this stream", "E_NO_ROUTE",
                                   serviceport=client.serviceport))
        writer.write(bytes(4 << 20))  # the body keeps coming after the refusal
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 502 ") and b"(E_NO_ROUTE)" in answer, answer
        assert b"route 'r'" not in answer  # the sidecar's message stays inside
        pending = listener.front.pending
        assert len(pending) == 1  # lingering, bounded with the unrouted sockets
        writer.close()
        await _until(functools.partial(_empty, pending), "the lingering socket to go")
        assert router.results == ["error"] and limiter.open_count("10.1.2.3") == 0


def _empty(items: Sized) -> bool:
    return len(items) == 0
