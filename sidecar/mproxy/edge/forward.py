"""Forwarding a client between edge replicas: the safety net when this edge has no tunnel for it.

    peering = Peering(relay)       # when the config has `peers`
    await peering.start()          # the forward listener, the peer poller
    await peering.forward(req, refusal)   # EdgeRelay.route: a peer takes the client, or refusal is raised

Out (this edge has no tunnel for the client's name or port, a fresh peer grants it): connect to the peer's
forward port within connectTimeoutSeconds, send a PROXY v2 header with the original client address and a
FORWARD_TLV (mproxy.edge.peer_auth) that MACs the addresses, time, kind, port and name, then the bytes
already read (the sniffed ClientHello or request head). The peer answers one byte: ACK (it holds an
accepting tunnel and takes the client) or NACK (it lost the tunnel since its last grants answer); on NACK,
EOF or timeout the next peer is tried (MAX_TRIES at most), then the client is refused as before, in its
own protocol. After ACK the bytes are piped both ways with the tunnel stream's bounds: streamBufferBytes
of write buffer before the other side's reads pause, the idle timeout, and half-close passed on.

In (the forward listener, peers.listen): only a header whose MAC holds, within clockSkewSeconds, and never
seen before (ReplayGuard) is accepted; the client is then routed to a LOCAL tunnel only (EdgeRelay
.route_here). A forwarded client is never forwarded again: one hop, no loops, even with stale tables.

Bounded: maxForwards clients each way at once, one PROXY header of at most MAX_HEADER bytes, MAX_TRIES.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol, cast

from mproxy import proxyproto
from mproxy.codec import address_from_peername
from mproxy.codec.errors import LocalProtocolError
from mproxy.config.edge import SERVICE_OF_KIND, EdgeConfig
from mproxy.edge.auth import read_secret
from mproxy.edge.listener import ClientRequest, Refused, refusal_bytes
from mproxy.edge.peer_auth import (
    FORWARD_TLV,
    KINDS,
    MAC_BYTES,
    ForwardClaim,
    PeerAuthError,
    PeerKeys,
    ReplayGuard,
)
from mproxy.edge.peer_endpoint import LogThrottle, grants_handler
from mproxy.edge.peers import GRANTS_PATH, Peer, PeerSet
from mproxy.edge.table import RoutingTable
from mproxy.metrics.peers import PeerMetrics
from mproxy.sockwatch import reset

log = logging.getLogger("mproxy.edge.peers")

__all__ = ["ACK", "NACK", "Peering"]

ACK, NACK = b"\x00", b"\x01"
MAX_TRIES = 3
MAX_HEADER = 1024  # 16 + 36 address bytes + a TLV of at most ~560 bytes
READ_CHUNK = 64 * 1024
Endpoint = tuple[str, int]


class Relay(Protocol):
    """What peering needs from the edge relay."""

    config: EdgeConfig
    secret: bytes
    edge_id: str
    draining: bool
    tunnel_port: int

    @property
    def table(self) -> RoutingTable[Any]: ...

    @property
    def metrics(self) -> Any: ...  # EdgeMetrics: its .registry gets the peer metrics

    async def route_here(self, req: ClientRequest) -> None: ...


def canonical(source: Endpoint, destination: Endpoint) -> tuple[Endpoint, Endpoint] | None:
    """The addresses as the receiving edge will decode them (IPv4-mapped unmapped, families matched)."""
    header = proxyproto.decode(proxyproto.encode_v2(source, destination))
    assert isinstance(header, proxyproto.ProxyHeader)
    if header.source is None or header.destination is None:
        return None
    return header.source, header.destination


class Peering:
    def __init__(self, relay: Relay) -> None:
        peers = relay.config.peers
        assert peers is not None
        self.relay = relay
        self.config = peers
        secret = read_secret(peers.secret_file) if peers.secret_file else relay.secret
        self.keys = PeerKeys(secret, skew=peers.clock_skew_seconds)
        self.metrics = PeerMetrics(relay.metrics.registry)
        self.peers = PeerSet(peers, edge_id=relay.edge_id, keys=self.keys, metrics=self.metrics,
                             tls=relay.config.tunnel.tls, tunnel_port=lambda: relay.tunnel_port)
        self.replay = ReplayGuard(peers.clock_skew_seconds)
        self.throttle = LogThrottle()
        self.active = {"in": 0, "out": 0}
        self._out_idle = asyncio.Event()  # set while no client forwarded out is open
        self._out_idle.set()
        self.port = 0  # the forward listener's bound port, once started
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ----------------------------------------------------------------------------------

    def add_routes(self, app: Any) -> None:
        app.router.add_get(GRANTS_PATH, grants_handler(self.keys, self.export))

    async def start(self) -> None:
        host, port = self.config.host_port
        try:
            self._server = await asyncio.start_server(self._inbound, host, port, limit=READ_CHUNK,
                                                      backlog=self.relay.config.limits.listen_backlog)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port} (peers.listen): "
                          f"{exc.strerror}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        await self.peers.start()
        log.info("forwarding between edges: forward port %d, peers from %s", self.port,
                 self.config.hostname or ", ".join(self.config.addresses))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.peers.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_idle(self, grace: float) -> None:
        """Until no client forwarded out is open, or `grace` seconds (a drain)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._out_idle.wait()

    def export(self) -> dict[str, Any]:
        table = self.relay.table
        return {"id": self.relay.edge_id, "forwardPort": self.port, "draining": self.relay.draining,
                "domains": sorted(table.names()), "ports": sorted(table.ports())}

    def status(self) -> dict[str, Any]:
        return {"forwardPort": self.port, "forwardsActive": dict(self.active), "peers": self.peers.status()}

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _count(self, direction: str, delta: int) -> None:
        self.active[direction] += delta
        self.metrics.active.labels(direction).set(self.active[direction])
        if direction == "out":
            if self.active["out"]:
                self._out_idle.clear()
            else:
                self._out_idle.set()

    # -- out: a client this edge has no tunnel for -----------------------------------------------------

    async def forward(self, req: ClientRequest, refusal: Refused) -> None:
        """Hand `req` to a peer that holds a tunnel for it and pipe until it ends; raises `refusal` when
        no peer takes it (the socket is then untouched, so the caller refuses the client as before)."""
        if refusal.reason != "no_tunnel" or req.kind not in KINDS:
            raise refusal
        candidates = self.peers.candidates(req.name, req.serviceport)
        if not candidates:
            self.metrics.forwarded_out("no_peer")
            raise refusal
        if self.active["out"] >= self.config.max_forwards:
            self.metrics.forwarded_out("limit")
            raise Refused("tunnel_full", f"{refusal}; forwarding to a peer edge is at its limit "
                          "(peers.maxForwards), retry shortly") from None
        self._count("out", 1)
        try:
            header = self._header(req)
            if header is None:
                self.metrics.forwarded_out("error")
                raise refusal
            upstream, result = await self._connect(req, candidates, header)
            if upstream is None:
                self.metrics.forwarded_out(result)
                raise refusal
            self.metrics.forwarded_out("ok")
            await self._pipe(req, *upstream)
        finally:
            self._count("out", -1)

    def _header(self, req: ClientRequest) -> bytes | None:
        sockname = req.writer.get_extra_info("sockname")
        pair = canonical((req.addr.address, int(req.addr.port)), (sockname[0], int(sockname[1])))
        if pair is None or not req.name.isascii():
            return None
        claim = ForwardClaim(req.kind, req.serviceport, req.name, self.relay.edge_id, int(time.time() * 1000))
        tlv = self.keys.forward_tlv(pair[0], pair[1], claim)
        return proxyproto.encode_v2(pair[0], pair[1], [(FORWARD_TLV, tlv)])

    async def _connect(self, req: ClientRequest, candidates: list[Peer], header: bytes
                       ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, str]:
        result = "connect_failed"
        for peer in candidates[:MAX_TRIES]:
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(self.config.connect_timeout_seconds):
                    reader, writer = await asyncio.open_connection(peer.address, peer.forward_port,
                                                                   limit=READ_CHUNK)
                    writer.write(header + req.initial)
                    try:
                        answer = await reader.read(1)
                    except ConnectionResetError:
                        answer = b""  # it closed at once with our bytes unread (at maxForwards): a no
                if answer == ACK:
                    log.debug("client %s (%s) forwarded to edge %s", req.addr.client_id,
                              req.name or req.serviceport, peer.edge_id)
                    return (reader, writer), "ok"
                result = "peer_refused"
                log.info("edge %s refused a forwarded client for %s (its tunnel went away, or it is at "
                         "maxForwards); trying the next", peer.edge_id, req.name or f"port {req.serviceport}")
            except (OSError, TimeoutError) as exc:
                if self.throttle(f"connect {peer.edge_id}"):
                    log.warning("cannot forward to edge %s at %s:%d: %s", peer.edge_id, peer.address,
                                peer.forward_port, str(exc) or type(exc).__name__)
            if writer is not None:
                writer.transport.abort()
        return None, result

    async def _pipe(self, req: ClientRequest, up_reader: asyncio.StreamReader,
                    up_writer: asyncio.StreamWriter) -> None:
        await splice(req.reader, req.writer, up_reader, up_writer,
                     high_water=self.relay.config.limits.stream_buffer_bytes,
                     idle=self.relay.config.limits.idle_timeout_seconds)

    # -- in: a client a peer forwarded here ----------------------------------------------------------

    async def _inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track()
        original = writer.transport.get_protocol()
        if self.active["in"] >= self.config.max_forwards:
            self.metrics.forwarded_in("limit")
            writer.write(NACK)
            writer.close()
            return
        self._count("in", 1)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._count("in", -1)

        try:
            req = await self._accept(reader, writer, release)
            if req is not None:
                await self._route_inbound(req)
        except (ConnectionError, LocalProtocolError) as exc:
            log.debug("forwarded client went away early: %s", exc)
        except Exception:  # a bug must cost this one client, not the listener
            log.exception("internal error while taking a forwarded client")
            writer.transport.abort()
        finally:
            if writer.transport.get_protocol() is original:  # not routed: nobody else owns it
                release()
                writer.close()
            # else: a tunnel stream owns the socket now and calls release when it ends

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      release: Any) -> ClientRequest | None:
        """The forwarded client, or None (refused, counted and logged)."""
        try:
            async with asyncio.timeout(self.config.connect_timeout_seconds):
                header, rest = await _read_header(reader)
            forward = [value for kind, value in header.tlvs if kind == FORWARD_TLV]
            if header.source is None or header.destination is None or len(forward) != 1:
                raise PeerAuthError("bad_header", "a PROXY v2 header with addresses and one forward TLV "
                                    "is required on the forward port")
            claim = self.keys.verify_forward(header.source, header.destination, forward[0], time.time())
            self.replay.check(forward[0][-MAC_BYTES:], time.monotonic())
        except (PeerAuthError, TimeoutError, proxyproto.ProxyProtocolError) as exc:
            reason = exc.reason if isinstance(exc, PeerAuthError) else "bad_header"
            self.metrics.forwarded_in(reason)
            if self.throttle(f"in {reason}"):
                peer = writer.get_extra_info("peername")
                log.warning("refused a connection on the forward port from %s: %s (%s)",
                            peer[0] if peer else "?", reason, str(exc) or type(exc).__name__)
            writer.transport.abort()
            return None
        addr = address_from_peername(header.source)
        return ClientRequest(addr, SERVICE_OF_KIND[claim.kind], claim.serviceport, claim.name, rest, reader,
                             writer, claim.kind, release)

    def _can_route(self, req: ClientRequest) -> bool:
        if self.relay.draining:
            return False
        table = self.relay.table
        tunnels = table.match_name(req.name)[1] if req.name else table.tunnels_for_port(req.serviceport)
        return any(t.accepting for t in tunnels)

    async def _route_inbound(self, req: ClientRequest) -> None:
        what = req.name or f"port {req.serviceport}"
        if not self._can_route(req):
            self.metrics.forwarded_in("refused")
            log.info("a peer forwarded a client for %s, but no local tunnel takes it now", what)
            req.writer.write(NACK)
            return
        # ACK goes out before the stream is opened, so it precedes every byte from the tunnel.
        req.writer.write(ACK)
        try:
            await self.relay.route_here(req)  # local tunnels only: never forwarded again
        except Refused as exc:
            # Acknowledged already: the client is told in its own protocol, through the peer.
            self.metrics.forwarded_in("refused")
            log.info("forwarded client for %s refused: %s (%s)", what, exc.reason, exc)
            req.writer.write(refusal_bytes(req.kind, exc.reason, str(exc)))
            return
        self.metrics.forwarded_in("ok")


async def _read_header(reader: asyncio.StreamReader) -> tuple[proxyproto.ProxyHeader, bytes]:
    buffered = b""
    while True:
        header = proxyproto.decode(buffered)
        if isinstance(header, proxyproto.ProxyHeader):
            if header.version != 2:
                raise PeerAuthError("bad_header", "the forward port takes PROXY v2 only")
            return header, buffered[header.length:]
        if len(buffered) > MAX_HEADER:
            raise PeerAuthError("bad_header", f"no PROXY v2 header within {MAX_HEADER} bytes")
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            raise ConnectionResetError("the peer closed before its PROXY header")
        buffered += chunk


async def splice(a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
                 b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter, *,
                 high_water: int, idle: float) -> None:
    """Pipe a <-> b until both sides ended, with write-buffer backpressure and one idle timeout for the
    pair; half-close is passed on. On an error (a reset) or the idle timeout both are reset."""
    loop = asyncio.get_running_loop()
    last = [loop.time()]
    for w in (a_writer, b_writer):
        w.transport.set_write_buffer_limits(high=high_water, low=max(high_water // 4, 1))

    async def one(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(READ_CHUNK):
            last[0] = loop.time()
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof() and not dst.is_closing():
            dst.write_eof()

    async def watch() -> None:
        while True:
            left = last[0] + idle - loop.time()
            if left <= 0:
                raise TimeoutError("idle")
            await asyncio.sleep(min(left, 5.0))

    pipes = [asyncio.ensure_future(one(a_reader, b_writer)), asyncio.ensure_future(one(b_reader, a_writer))]
    watcher = asyncio.ensure_future(watch())
    try:
        pending: set[asyncio.Future[None]] = set(pipes)
        while pending:
            done, pending = await asyncio.wait(pending | {watcher}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(watcher)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
        b_writer.close()
    except (ConnectionError, TimeoutError, OSError) as exc:
        # A reset, not a FIN, as the bridge does: a client must not take a cut answer for a whole one.
        log.debug("forwarded connection ended: %s", str(exc) or type(exc).__name__)
        reset(cast(asyncio.Transport, a_writer.transport))
        reset(cast(asyncio.Transport, b_writer.transport))
    finally:
        watcher.cancel()
        for task in pipes:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pipes, watcher, return_exceptions=True)
