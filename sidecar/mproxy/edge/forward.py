"""Forwarding a client between edge replicas: the safety net when this edge has no tunnel for it.

    peering = Peering(relay)       # when the config has `peers`
    await peering.start()          # the forward listener, the peer poller
    peering.offer(client, refusal) # EdgeRelay._unroutable: raises Forwarding when a peer may take it
    peering.forward(client, sig)   # the EdgeClient hands its socket over (mproxy.edge.client)

Out (this edge has no tunnel for the client's name or port, a fresh peer grants it): connect to the peer's
forward port within connectTimeoutSeconds, send a PROXY v2 header with the original client address and a
FORWARD_TLV (mproxy.edge.peer_auth) that MACs the addresses, time, kind, port and name, then the bytes
already read (the sniffed ClientHello or request head). The peer answers one byte: ACK (it holds an
accepting tunnel and takes the client) or NACK (it lost the tunnel since its last grants answer); on NACK,
EOF or timeout the next peer is tried (MAX_TRIES at most), then the client is refused as before, in its
own protocol. After ACK the two sockets are piped Protocol to Protocol (mproxy.edge.splice) with the tunnel
stream's bounds: streamBufferBytes of write buffer before the other side's reads pause, the idle timeout,
half-close passed on, a reset passed on as a reset.

In (the forward listener, peers.listen): only a header whose MAC holds, within clockSkewSeconds, and never
seen before (ReplayGuard) is accepted; the client is then served by an EdgeClient of a `forwarded` Front,
routed to a LOCAL tunnel only. A forwarded client is never forwarded again: one hop, no loops, even with
stale tables.

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
from mproxy.edge.client import EdgeClient, Front, Router
from mproxy.edge.limits import ClientLimiter, PendingClients
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
from mproxy.edge.peers import GRANTS_PATH, Peer, PeerSet, grant_json
from mproxy.edge.refusal import Forwarding, Refused
from mproxy.edge.splice import Splice
from mproxy.edge.table import TunnelDirectory
from mproxy.metrics.peers import PeerMetrics
from mproxy.tunnel.mux import Stream

log = logging.getLogger("mproxy.edge.peers")

__all__ = ["ACK", "NACK", "Peering"]

ACK, NACK = b"\x00", b"\x01"
MAX_TRIES = 3
MAX_FRONTS = 1024  # (kind, group, tls refusal) combinations of forwarded clients kept
MAX_HEADER = 1024  # 16 + 36 address bytes + a TLV of at most ~560 bytes
Endpoint = tuple[str, int]


class Relay(Router, Protocol):
    """What peering needs from the edge relay (it is also the clients' Router)."""

    config: EdgeConfig
    secret: bytes
    edge_id: str
    draining: bool
    tunnel_port: int
    limiter: ClientLimiter
    pending: PendingClients

    @property
    def table(self) -> TunnelDirectory[Any]: ...

    @property
    def metrics(self) -> Any: ...  # EdgeMetrics: its .registry gets the peer metrics


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
        self._tasks: set[asyncio.Task[None]] = set()  # forwards out still connecting (<= maxForwards)
        self._splices: set[Splice] = set()  # forwards out piping (<= maxForwards)
        self._pending_in: set[_Inbound] = set()  # forward-port connections before their header
        self._local = _LocalRouter(relay, self.metrics)
        # One Front per (kind, listener group, TLS alert or close) of the clients peers forward here: the
        # verified header says which, so a forwarded client is routed and refused as on its own listener.
        self.fronts: dict[tuple[str, str | None, bool], Front] = {}

    # -- lifecycle ----------------------------------------------------------------------------------

    def front(self, claim: ForwardClaim) -> Front | None:
        """The Front of forwarded clients like `claim`'s; None past MAX_FRONTS (a peer naming very many
        groups: its clients are refused)."""
        key = (claim.kind, claim.group, claim.tls_alert)
        front = self.fronts.get(key)
        if front is None and len(self.fronts) < MAX_FRONTS:
            lim = self.relay.config.limits
            front = self.fronts[key] = Front(
                kind=claim.kind, service=SERVICE_OF_KIND[claim.kind], public_port=0, proxy_protocol=False,
                trusted=lambda _: False, sniff_timeout=lim.sniff_timeout_seconds, limiter=self.relay.limiter,
                pending=self.relay.pending, router=self._local, unrouted=set(), forwarded=True,
                on_lost=self._in_lost, tls_alert=claim.tls_alert, group=claim.group)
        return front

    def add_routes(self, app: Any) -> None:
        app.router.add_get(GRANTS_PATH, grants_handler(self.keys, self.export))

    async def start(self) -> None:
        host, port = self.config.host_port
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Inbound(self), host, port, backlog=self.relay.config.limits.listen_backlog)
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
        for inbound in list(self._pending_in):
            inbound.drop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for splice in list(self._splices):
            splice.abort()  # the edge is going away: its forwarded clients are cut, not left open

    async def wait_idle(self, grace: float) -> None:
        """Until no client forwarded out is open, or `grace` seconds (a drain)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._out_idle.wait()

    def export(self) -> dict[str, Any]:
        anywhere, groups = self.relay.table.scoped()
        out: dict[str, Any] = {"id": self.relay.edge_id, "forwardPort": self.port,
                               "draining": self.relay.draining, "domains": sorted(anywhere.domains),
                               "ports": sorted(anywhere.ports)}
        if groups:  # tunnels that serve only some listener groups: forwarded only clients of those
            out["groups"] = {g: grant_json(v) for g, v in sorted(groups.items())}
        return out

    def status(self) -> dict[str, Any]:
        return {"forwardPort": self.port, "forwardsActive": dict(self.active), "peers": self.peers.status()}

    def _count(self, direction: str, delta: int) -> None:
        self.active[direction] += delta
        self.metrics.active.labels(direction).set(self.active[direction])
        if direction == "out":
            if self.active["out"]:
                self._out_idle.clear()
            else:
                self._out_idle.set()

    # -- out: a client this edge has no tunnel for -----------------------------------------------------

    def offer(self, client: EdgeClient, refusal: Refused) -> None:
        """Where no local tunnel takes `client`: raise Forwarding when a fresh peer grants it, Refused
        when forwarding is at its limit; return (counted) when no peer can: the caller raises `refusal`."""
        if (refusal.reason != "no_tunnel" or client.kind not in KINDS or client.front.forwarded
                or client.stream is not None):  # a replay after a local attempt stays here
            return
        candidates = self.peers.candidates(client.name, client.serviceport, client.front.group)
        if not candidates:
            self.metrics.forwarded_out("no_peer")
            return
        if self.active["out"] >= self.config.max_forwards:
            self.metrics.forwarded_out("limit")
            raise Refused("tunnel_full", f"{refusal}; forwarding to a peer edge is at its limit "
                          "(peers.maxForwards), retry shortly")
        raise Forwarding(refusal, candidates)

    def forward(self, client: EdgeClient, signal: Forwarding) -> None:
        """Take `client` to a peer (a task until the peer answers, then a Splice)."""
        self._count("out", 1)
        task = asyncio.ensure_future(self._out(client, signal))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _out(self, client: EdgeClient, signal: Forwarding) -> None:
        spliced = False
        upstream: asyncio.Transport | None = None
        try:
            header = self._header(client)
            if header is None:
                self.metrics.forwarded_out("error")
                client.forward_refused(signal.refusal)
                return
            upstream, first, sent, result = await self._connect(client, signal.peers, header)
            if upstream is None:
                self.metrics.forwarded_out(result)
                client.forward_refused(signal.refusal)
                return
            self.metrics.forwarded_out("ok")
            t = client.transport
            assert t is not None
            if t.is_closing() or upstream.is_closing():  # one side went away while the peer answered
                log.debug("forwarded client %s ended before the pipe started", client.addr.client_id)
                upstream.abort()
                return
            limits = self.relay.config.limits
            splice: Splice | None = None

            def ended(result: str) -> None:
                assert splice is not None
                self._splices.discard(splice)
                self._count("out", -1)
                client.forward_ended()

            splice = Splice(t, upstream, high_water=limits.stream_buffer_bytes,
                            idle=limits.idle_timeout_seconds, on_done=ended, a_first=first,
                            b_first=client.read_so_far(sent), a_ended=client.client_ended)
            self._splices.add(splice)
            spliced = True
        except asyncio.CancelledError:  # the edge is closing
            if upstream is not None:
                upstream.abort()
            if client.transport is not None:
                client.transport.abort()
            raise
        except Exception:  # a bug must cost this one client, not the edge
            log.exception("internal error while forwarding a client to a peer edge")
            if upstream is not None:
                upstream.abort()
            if client.transport is not None:
                client.transport.abort()
        finally:
            if not spliced:
                self._count("out", -1)

    def _header(self, client: EdgeClient) -> bytes | None:
        t = client.transport
        sockname = t.get_extra_info("sockname") if t is not None else None
        if not sockname:
            return None
        pair = canonical((client.addr.address, int(client.addr.port)), (sockname[0], int(sockname[1])))
        if pair is None or not client.name.isascii():
            return None
        claim = ForwardClaim(client.kind, client.serviceport, client.name, self.relay.edge_id,
                             int(time.time() * 1000), client.front.group, client.front.tls_alert)
        tlv = self.keys.forward_tlv(pair[0], pair[1], claim)
        return proxyproto.encode_v2(pair[0], pair[1], [(FORWARD_TLV, tlv)])

    async def _connect(self, client: EdgeClient, candidates: list[Peer], header: bytes
                       ) -> tuple[asyncio.Transport | None, bytes, int, str]:
        """(the peer's connection, the bytes it sent after ACK, how many client bytes went to it, "ok")
        or (None, b"", 0, why not)."""
        result = "connect_failed"
        loop = asyncio.get_running_loop()
        what = client.name or f"port {client.serviceport}"
        for peer in candidates[:MAX_TRIES]:
            if client.transport is None or client.transport.is_closing():
                return None, b"", 0, "error"  # the client is gone: no point asking another peer
            dial: _Dial | None = None
            try:
                async with asyncio.timeout(self.config.connect_timeout_seconds):
                    transport, dial = await loop.create_connection(_Dial, peer.address, peer.forward_port)
                    initial = client.read_so_far()
                    transport.write(header + initial)
                    answer = await dial.answer
                if answer == ACK:
                    log.debug("client %s (%s) forwarded to edge %s", client.addr.client_id, what,
                              peer.edge_id)
                    return transport, bytes(dial.rest), len(initial), "ok"
                # NACK, or closed at once with our bytes unread (at its maxForwards): a no
                result = "peer_refused"
                log.info("edge %s refused a forwarded client for %s (its tunnel went away, or it is at "
                         "maxForwards); trying the next", peer.edge_id, what)
            except (OSError, TimeoutError) as exc:
                result = "connect_failed"
                if self.throttle(f"connect {peer.edge_id}"):
                    log.warning("cannot forward to edge %s at %s:%d: %s", peer.edge_id, peer.address,
                                peer.forward_port, str(exc) or type(exc).__name__)
            except BaseException:  # cancelled (the edge is closing): the dialled socket is ours to close
                if dial is not None and dial.transport is not None:
                    dial.transport.abort()
                raise
            if dial is not None and dial.transport is not None:
                dial.transport.abort()
        return None, b"", 0, result

    # -- in: a client a peer forwarded here ----------------------------------------------------------

    def can_route(self, claim: ForwardClaim) -> bool:
        if self.relay.draining:
            return False
        table, group = self.relay.table, claim.group
        tunnels = (table.match_name(claim.name, group)[1] if claim.name
                   else table.tunnels_for_port(claim.serviceport, group))
        return any(t.accepting for t in tunnels)

    def _in_lost(self, client: EdgeClient) -> None:
        self._count("in", -1)  # an adopted forwarded client's socket is gone (once per socket)


class _Dial(asyncio.Protocol):
    """The connection to a peer's forward port, until its one-byte answer (then a Splice takes it)."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.rest = bytearray()  # what came with the answer: the first bytes for the client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data[:1])
            data = data[1:]
            if self.transport is not None:
                self.transport.pause_reading()  # the rest waits for the Splice, in the kernel
        self.rest += data  # at most one read: reading is paused from the answer on

    def eof_received(self) -> bool:
        if not self.answer.done():
            self.answer.set_result(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_result(b"")  # a reset right after the connect (at its maxForwards) is a no


class _Inbound(asyncio.Protocol):
    """A connection on the forward port until its PROXY header is verified; then an EdgeClient takes it."""

    def __init__(self, peering: Peering) -> None:
        self.p = peering
        self.buf = bytearray()
        self.t: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self.t = cast(asyncio.Transport, transport)
        p = self.p
        if p.active["in"] >= p.config.max_forwards:
            p.metrics.forwarded_in("limit")
            t.write(NACK)
            t.close()
            return
        p._count("in", 1)
        self._counted = True
        p._pending_in.add(self)
        self._timer = asyncio.get_running_loop().call_later(p.config.connect_timeout_seconds,
                                                            self._timed_out)

    def data_received(self, data: bytes) -> None:
        if not self._counted:
            return
        self.buf += data
        try:
            header = proxyproto.decode(bytes(self.buf))
            if not isinstance(header, proxyproto.ProxyHeader):
                if len(self.buf) > MAX_HEADER:
                    raise PeerAuthError("bad_header", f"no PROXY v2 header within {MAX_HEADER} bytes")
                return
            claim = self._verify(header)
        except (PeerAuthError, proxyproto.ProxyProtocolError) as exc:
            self._refuse(exc.reason if isinstance(exc, PeerAuthError) else "bad_header", exc)
            return
        try:
            self._take(header, claim)
        except Exception:  # a bug must cost this one client, not the listener
            log.exception("internal error while taking a forwarded client")
            self._end(abort=True)

    def _verify(self, header: proxyproto.ProxyHeader) -> ForwardClaim:
        p = self.p
        if header.version != 2:
            raise PeerAuthError("bad_header", "the forward port takes PROXY v2 only")
        forward = [value for kind, value in header.tlvs if kind == FORWARD_TLV]
        if header.source is None or header.destination is None or len(forward) != 1:
            raise PeerAuthError("bad_header", "a PROXY v2 header with addresses and one forward TLV "
                                "is required on the forward port")
        claim = p.keys.verify_forward(header.source, header.destination, forward[0], time.time())
        p.replay.check(forward[0][-MAC_BYTES:], time.monotonic())
        return claim

    def _take(self, header: proxyproto.ProxyHeader, claim: ForwardClaim) -> None:
        p, t = self.p, self.t
        assert t is not None and header.source is not None
        try:
            addr = address_from_peername(header.source)
        except LocalProtocolError as exc:
            self._refuse("bad_header", exc)
            return
        what = claim.name or f"port {claim.serviceport}"
        front = p.front(claim)
        if front is None or not p.can_route(claim):
            p.metrics.forwarded_in("refused")
            log.info("a peer forwarded a client for %s, but no local tunnel takes it now", what)
            t.write(NACK)
            self._end()
            return
        self._leave()
        # ACK goes out before the stream is opened, so it precedes every byte from the tunnel.
        t.write(ACK)
        client = EdgeClient(front)
        t.set_protocol(client)  # from here its connection_lost frees the "in" slot (Front.on_lost)
        client.adopt(t, addr, claim.serviceport, claim.name, bytes(self.buf[header.length:]))

    def _refuse(self, reason: str, exc: Exception) -> None:
        p = self.p
        p.metrics.forwarded_in(reason)
        if p.throttle(f"in {reason}"):
            peer = self.t.get_extra_info("peername") if self.t is not None else None
            log.warning("refused a connection on the forward port from %s: %s (%s)",
                        peer[0] if peer else "?", reason, str(exc) or type(exc).__name__)
        self._end(abort=True)

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse("bad_header", TimeoutError("no PROXY header in time"))

    def _leave(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.p._pending_in.discard(self)

    def _end(self, *, abort: bool = False) -> None:
        self._leave()
        if self._counted:
            self._counted = False
            self.p._count("in", -1)
        if self.t is not None:
            if abort:
                self.t.abort()
            else:
                self.t.close()

    def drop(self) -> None:
        self._end(abort=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            log.debug("forwarded client went away before its header: %s", exc)
            self._end()


class _LocalRouter:
    """The Router of forwarded clients: the relay's, counting the first answer per client in
    forwards_in_total (the relay never forwards a client of a `forwarded` Front again)."""

    def __init__(self, relay: Router, metrics: PeerMetrics) -> None:
        self.relay = relay
        self.metrics = metrics
        self.stream_buffer = relay.stream_buffer
        self.buffer_rule = relay.buffer_rule

    def open(self, client: EdgeClient) -> Stream:
        first = client.stream is None
        try:
            stream = self.relay.open(client)
        except Refused as exc:
            if first:  # acknowledged already: the client is told in its own protocol, through the peer
                self.metrics.forwarded_in("refused")
                log.info("forwarded client for %s refused: %s (%s)", client.name or
                         f"port {client.serviceport}", exc.reason, exc)
            raise
        if first:
            self.metrics.forwarded_in("ok")
        return stream

    def forward(self, client: EdgeClient, signal: Forwarding) -> None:
        raise AssertionError("a forwarded client is never forwarded again")

    def refused(self, client: EdgeClient, tunnel: Any, code: str) -> None:
        self.relay.refused(client, tunnel, code)

    def done(self, client: EdgeClient, result: str) -> None:
        self.relay.done(client, result)

    def rejected(self, kind: str, reason: str) -> None:
        self.relay.rejected(kind, reason)

    def buffer_cut(self, limit: str) -> None:
        self.relay.buffer_cut(limit)
