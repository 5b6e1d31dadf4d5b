"""`kind: udp` listeners: each client address:port is one M-PROXY stream, each datagram one data frame.

A new source address:port is admitted like a TCP client (ClientLimiter: maxStreamsPerClient,
connectionRate), gets a tunnel by its listener's public port (the token's `ports` claim), and a stream
opened with a `connection` frame (service `udp`, serviceport = the public port). From then on every
datagram it sends is one data frame (mproxy.tunnel.datagram) and every data frame for it is one datagram
back. Nothing is split or queued without bound; what cannot go is dropped and counted
(mproxy_edge_udp_dropped_total{reason}):
- a datagram over `maxDatagramBytes`, either way (oversize);
- past the client's `datagramRate`/`datagramBurst` or the tunnel's `tunnelDatagramRate` on this listener,
  client to tunnel (rate_limited, tunnel_rate_limited);
- the tunnel's queue for the client at its bound, or the sidecar paused it (queue_full, paused);
- the socket's send buffer towards clients full (client_slow);
- a new client when the listener holds `maxClients`, no tunnel serves the port, every tunnel is full, or
  the client's address is over its limits (too_many_clients, no_tunnel, tunnel_full, client_limit).
A client silent both ways for `idleTimeoutSeconds` is ended with `end` and forgotten (once the edge
drains, after DRAIN_IDLE seconds, so a drain does not wait out a 30 s timer for clients that are done); a
stream the sidecar ends (`end` or `error`, e.g. ECONNREFUSED from a backend that is down) forgets the
client too, and its next datagram opens a new stream. M-PROXY names a stream by address:port alone, so
that new stream cannot open until both sides are done with the old one (our `end` sent and the sidecar's
received): datagrams that come meanwhile wait for it (at most WAIT_MAX per client, WAIT_BYTES_MAX per
listener, WAIT_SECONDS), then open the new stream; past those bounds they are dropped (client_id_in_use).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol, cast

from mproxy.codec import LocalProtocolError, address_from_peername
from mproxy.config.edge import ListenerConfig, UdpOptions
from mproxy.edge.limits import ClientLimiter
from mproxy.metrics.udp import UdpMetrics
from mproxy.tunnel.datagram import SERVICE, DatagramStream
from mproxy.tunnel.mux import Multiplexer, Stream, StreamEnd, StreamHandler

__all__ = ["TokenBucket", "UdpListener", "udp_clients"]

log = logging.getLogger("mproxy.edge")

DRAIN_IDLE = 1.0  # seconds of silence that end a client once the edge drains
WAIT_MAX = 16  # datagrams of one client held while its previous stream ends
WAIT_BYTES_MAX = 256 * 1024  # all such datagrams of a listener together
WAIT_SECONDS = 5.0  # held longer (the sidecar slow to answer `end`), they are dropped, not sent late
SEND_BUFFER_MAX = 1 << 20  # bytes asyncio may hold for clients when the socket is full; past it, drop
_LIMITER_REASONS = {"too_many_clients": "too_many_clients"}  # anything else is client_limit


def udp_clients(mux: Multiplexer) -> dict[str, int]:
    """A tunnel's UDP client streams by public port (for /status; streams still ending count too)."""
    out: dict[str, int] = {}
    for stream in mux.streams.values():
        if isinstance(stream, DatagramStream):
            key = str(stream.serviceport)
            out[key] = out.get(key, 0) + 1
    return out


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Picker(Protocol):
    """The relay's routing table, by port."""

    def pick_port(self, port: int, exclude: set[int] | None = None, group: str | None = None) -> Any: ...

    def tunnels_for_port(self, port: int, group: str | None = None) -> list[Any]: ...


class _Client(StreamHandler):
    """One client address:port: the stream's handler."""

    __slots__ = ("bucket", "key", "last_active", "listener", "peer", "stream", "timer")

    def __init__(self, listener: UdpListener, key: tuple[str, int], peer: Any, now: float) -> None:
        self.listener = listener
        self.key = key
        self.peer = peer
        opts = listener.opts
        self.bucket = TokenBucket(opts.datagram_rate, float(opts.datagram_burst), now)
        self.last_active = now
        self.stream: DatagramStream | None = None
        self.timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        self.last_active = self.listener.now()
        self.listener.to_client(self, data)

    def error_received(self, message: str, code: str) -> None:
        log.info("udp client %s: the sidecar ended its stream (%s)", self.stream.client_id if self.stream
                 else "?", code)

    def eof_received(self) -> None:
        stream = self.stream
        self.listener.forget(self)  # the sidecar is done with this client (its idle timer): so are we
        if stream is not None:
            stream.close()

    def stream_closed(self, end: StreamEnd) -> None:
        self.listener.forget(self)
        self.listener.stream_gone(self.key)

    def check_idle(self) -> None:
        listener = self.listener
        left = self.last_active + listener.idle_timeout - listener.now()
        if left > 0:
            self.timer = listener.call_later(left, self.check_idle)
            return
        self.timer = None
        stream = self.stream
        listener.forget(self)  # a datagram from now on opens a new stream, once this one is gone
        if stream is not None and not stream.closed:
            # `end`, and keep the stream until the sidecar's `end`: a new stream for this address:port
            # opened before that would reach the sidecar while it still holds the old one.
            stream.write_eof()


class _Waiting:
    """Datagrams of a client whose previous stream is still ending."""

    __slots__ = ("datagrams", "peer", "since")

    def __init__(self, peer: Any, since: float) -> None:
        self.peer = peer
        self.since = since
        self.datagrams: list[bytes] = []


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, listener: UdpListener) -> None:
        self.listener = listener

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.listener.from_client(data, addr)
        except Exception:  # a bug must cost this one datagram only, never the listener
            log.exception("internal error handling a udp datagram")

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for datagrams we sent clients (a client that left): nothing to do, UDP is lossy.
        log.debug("udp listener: %s", exc)


class UdpListener:
    """A public UDP port; same interface as PublicListener for the relay (start, stop_accepting, close)."""

    def __init__(self, config: ListenerConfig, *, table: Picker, limiter: ClientLimiter, metrics: UdpMetrics,
                 clock: Callable[[], float] | None = None) -> None:
        assert config.udp is not None, "a udp listener needs its UdpOptions"
        self.config = config
        self.opts: UdpOptions = config.udp
        self.table = table
        self.limiter = limiter
        self.metrics = metrics
        self.now = clock or time.monotonic
        self.port = 0
        self.clients: dict[tuple[str, int], _Client] = {}
        self._waiting: dict[tuple[str, int], _Waiting] = {}
        self._waiting_bytes = 0
        self._tunnel_buckets: weakref.WeakKeyDictionary[Multiplexer, TokenBucket] = (
            weakref.WeakKeyDictionary())
        self._transport: asyncio.DatagramTransport | None = None
        self.accepting = True
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def public_port(self) -> int:
        return self.config.public_port or self.port

    @property
    def idle_timeout(self) -> float:
        idle = self.opts.idle_timeout_seconds
        return idle if self.accepting else min(idle, DRAIN_IDLE)

    @property
    def label(self) -> str:
        return str(self.public_port)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        host, port = self.config.host_port
        try:
            transport, _ = await self.loop.create_datagram_endpoint(lambda: _Protocol(self),
                                                                    local_addr=(host, port))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on udp {host}:{port} (listeners[].listen): "
                          f"{exc.strerror}") from None
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        self.metrics.start(self.label)

    async def stop_accepting(self) -> None:
        """Drain: new clients are dropped; a client with a stream keeps it until DRAIN_IDLE of silence."""
        self.accepting = False
        for client in list(self.clients.values()):
            if client.timer is not None:
                client.timer.cancel()
            client.check_idle()

    async def close(self) -> None:
        self.accepting = False
        self._waiting.clear()
        self._waiting_bytes = 0
        for client in list(self.clients.values()):
            stream = client.stream
            self.forget(client)
            if stream is not None and not stream.closed:
                stream.close()
        if self._transport is not None:
            self._transport.close()

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        assert self.loop is not None, "the listener is not started"
        return self.loop.call_later(delay, callback)

    # -- client -> tunnel ---------------------------------------------------------------------------

    def from_client(self, data: bytes, peer: Any, *, may_wait: bool = True) -> None:
        if len(data) > self.opts.max_datagram_bytes:
            self.metrics.drop("oversize")
            return
        key = (peer[0], peer[1])
        client = self.clients.get(key)
        now = self.now()
        if client is None:
            if key in self._waiting:  # behind the others: in order, and no new-client token spent
                self._wait(key, peer, data, now)
                return
            client = self._new_client(key, peer, now, data if may_wait else None)
            if client is None:
                return
        stream = client.stream
        assert stream is not None
        if not client.bucket.take(now):
            self.metrics.drop("rate_limited")
            return
        bucket = self._tunnel_buckets.get(stream.mux)
        if bucket is None:
            rate = self.opts.tunnel_datagram_rate
            bucket = self._tunnel_buckets[stream.mux] = TokenBucket(rate, max(rate, 1.0), now)
        if not bucket.take(now):
            self.metrics.drop("tunnel_rate_limited")
            return
        client.last_active = now
        reason = stream.send_datagram(data)
        if reason is not None:
            self.metrics.drop(reason)
            return
        self.metrics.relayed(self.label, "in", len(data))

    def _new_client(self, key: tuple[str, int], peer: Any, now: float, data: bytes | None) -> _Client | None:
        """A stream for a new client, or None: the datagram was dropped and counted, or (`data` given and
        the client's previous stream still ending on the only tunnel it could use) it waits for it."""
        if not self.accepting:
            self.metrics.drop("draining")
            return None
        if len(self.clients) >= self.opts.max_clients:
            self.metrics.drop("too_many_clients")
            return None
        try:
            addr = address_from_peername(peer)
        except LocalProtocolError:
            self.metrics.drop("client_limit")
            return None
        refused = self.limiter.admit(addr.address)
        if refused is not None:
            self.metrics.drop(_LIMITER_REASONS.get(refused, "client_limit"))
            return None
        port = self.public_port
        tried: set[int] = set()
        clashed = ending = False
        while True:
            session = self.table.pick_port(port, tried, self.config.group)
            if session is None:
                self.limiter.release(addr.address)
                if ending and data is not None:
                    self._wait(key, peer, data, now)
                    return None
                reason = "client_id_in_use" if clashed else (
                    "tunnel_full" if self.table.tunnels_for_port(port, self.config.group) else "no_tunnel")
                self.metrics.drop(reason)
                return None
            mux: Multiplexer | None = session.mux
            tried.add(id(session))
            if mux is None or not mux.can_open(addr.address):
                continue
            other = mux.streams.get(addr.client_id)
            if other is not None:
                clashed = True  # the same address:port has a TCP stream, or this client's ending one, there
                was = other.handler
                ending = ending or (isinstance(was, _Client) and was.listener is self
                                    and self.clients.get(key) is not was)
                continue
            client = _Client(self, key, peer, now)
            try:
                stream = mux.open_stream(addr, client, service=SERVICE, serviceport=port)
            except (LocalProtocolError, ConnectionError, ValueError) as exc:
                log.info("udp client %s: cannot open a stream (%s)", addr.client_id, exc)
                continue
            assert isinstance(stream, DatagramStream)
            client.stream = stream
            self.clients[key] = client
            client.timer = self.call_later(self.idle_timeout, client.check_idle)
            self.metrics.client_count(self.label, 1)
            return client

    def _wait(self, key: tuple[str, int], peer: Any, data: bytes, now: float) -> None:
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = _Waiting(peer, now)
        if (len(waiting.datagrams) >= WAIT_MAX or self._waiting_bytes + len(data) > WAIT_BYTES_MAX
                or now - waiting.since > WAIT_SECONDS):
            self.metrics.drop("client_id_in_use")
            return
        waiting.datagrams.append(data)
        self._waiting_bytes += len(data)

    def stream_gone(self, key: tuple[str, int]) -> None:
        """A client's stream is gone: datagrams that waited for it go next (on the loop's next turn, not
        inside the multiplexer's close)."""
        if key in self._waiting and self.loop is not None:
            self.loop.call_soon(self._send_waiting, key)

    def _send_waiting(self, key: tuple[str, int]) -> None:
        waiting = self._waiting.pop(key, None)
        if waiting is None:
            return
        self._waiting_bytes -= sum(len(d) for d in waiting.datagrams)
        if self.now() - waiting.since > WAIT_SECONDS:
            for _ in waiting.datagrams:
                self.metrics.drop("client_id_in_use")
            return
        for data in waiting.datagrams:
            self.from_client(data, waiting.peer, may_wait=False)

    # -- tunnel -> client ---------------------------------------------------------------------------

    def to_client(self, client: _Client, data: bytes) -> None:
        t = self._transport
        if t is None or t.is_closing() or self.clients.get(client.key) is not client:
            self.metrics.drop("closed")
            return
        if len(data) > self.opts.max_datagram_bytes:
            self.metrics.drop("oversize")
            return
        # asyncio's and uvloop's datagram transports both have it; typeshed lists it on Transport only.
        if cast(asyncio.WriteTransport, t).get_write_buffer_size() > SEND_BUFFER_MAX:
            self.metrics.drop("client_slow")
            return
        t.sendto(data, client.peer)
        self.metrics.relayed(self.label, "out", len(data))

    def forget(self, client: _Client) -> None:
        if self.clients.get(client.key) is not client:
            return
        del self.clients[client.key]
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        stream: Stream | None = client.stream
        if stream is not None:
            self.limiter.release(stream.addr.address)
        self.metrics.client_count(self.label, -1)

    def status(self) -> dict[str, Any]:
        return {"kind": "udp", "port": self.port, "publicPort": self.public_port,
                "clients": len(self.clients)}


