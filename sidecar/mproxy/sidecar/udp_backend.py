"""One UDP client on the sidecar: a connected UDP socket to its route's backend, datagram for datagram.

`UdpBackend` is the handler of a `udp` stream (mproxy.tunnel.datagram). Only a route that lists `udp` in
its services takes one (a route matching any service, or the default route, is for byte streams); none ->
`error` E_NO_ROUTE, as for TCP. A route with weighted backends picks one per client (its refuse share:
E_NO_ROUTE). The backend socket is connected to the route's host:port, so only its
replies come back, each as one data frame for this client. Bounded both ways, never blocking:
- datagrams that arrive while the socket opens are held up to EARLY_MAX (count and bytes), then dropped;
- the kernel buffer towards the backend full -> dropped (backend_slow); the tunnel's queue for the client
  full -> dropped (queue_full), counted in mproxy_sidecar_udp_dropped_total{reason}.
ICMP port unreachable from the backend (nothing listens) ends the stream with `error` ECONNREFUSED; the
tunnel carries on. The edge's `end` (its client went idle) closes the socket; so does our own idle timer
(limits.udpIdleTimeoutSeconds, both directions), which shortens to DRAIN_IDLE once the sidecar drains
(`drain()`), so a shutdown does not wait out a 30 s timer for clients that are done.
Metrics: mproxy_sidecar_udp_* per route (mproxy.metrics.udp), and, like a TCP stream, the tiered stream
metrics (streams opened/active, received/sent bytes per route and client, under the cardinality guard).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any, cast

from mproxy.codec.errors import ErrorCode
from mproxy.metrics.sidecar import SidecarMetrics, StreamMeter
from mproxy.metrics.udp import UdpMetrics
from mproxy.routing import Backend, Route, RouteTable
from mproxy.tunnel.datagram import SERVICE, DatagramStream
from mproxy.tunnel.mux import Stream, StreamEnd, StreamHandler

__all__ = ["UdpBackend"]

log = logging.getLogger("mproxy.sidecar")

EARLY_MAX = 64  # datagrams held while the backend socket opens
EARLY_MAX_BYTES = 256 * 1024
SEND_BUFFER_MAX = 1 << 20  # bytes asyncio may hold for the backend when its socket is full
DRAIN_IDLE = 1.0  # seconds of silence that end a client once the sidecar drains


def _code(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return ErrorCode.CONNREFUSED
    num = getattr(exc, "errno", None)
    return errno.errorcode.get(num, ErrorCode.BACKEND) if isinstance(num, int) else ErrorCode.BACKEND


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpBackend) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.from_backend(data)

    def error_received(self, exc: Exception) -> None:
        self.owner.backend_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.owner.backend_error(exc)


class UdpBackend(StreamHandler):
    def __init__(self, stream: Stream, table: RouteTable, metrics: SidecarMetrics, udp: UdpMetrics,
                 idle_timeout: float, tunnel: str) -> None:
        assert isinstance(stream, DatagramStream), "a udp stream is a DatagramStream"
        self.stream = stream
        self.udp = udp
        self.tunnel = tunnel
        self.idle_timeout = idle_timeout
        self.transport: asyncio.DatagramTransport | None = None
        self.early: list[bytes] = []
        self.early_bytes = 0
        self.closed = False
        self.last_active = time.monotonic()
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.meter: StreamMeter | None = None
        route = table.match(SERVICE, stream.serviceport)
        if route is None or SERVICE not in route.services:
            self.closed = True
            metrics.refuse("no_route")
            log.info("no udp route for port %s: refused", stream.serviceport,
                     extra={"tunnel": tunnel, "client": stream.client_id, "route": "-"})
            stream.abort(f"no route for service 'udp' port {stream.serviceport!r}", ErrorCode.NO_ROUTE)
            self.route: Route | None = None
            return
        backend = table.pick(route)  # weighted backends: one per client, for as long as it lasts
        if backend is None:
            self.closed = True
            metrics.refuse("refused_backend")
            log.info("udp route %s refused the client (its refuse share, or every backend weight 0)",
                     route.name, extra={"tunnel": tunnel, "client": stream.client_id, "route": route.name})
            stream.abort(f"route {route.name!r} refuses this stream (a refused share of its backends, or "
                         "every backend weight 0)", ErrorCode.NO_ROUTE)
            self.route = None
            return
        self.route = route
        stream.route = route.name
        udp.client_count(route.name, 1)
        self.meter = metrics.stream_opened(route.name, stream.addr.address)
        self.task = self.loop.create_task(self._open(backend))
        self.timer = self.loop.call_later(idle_timeout, self._check_idle)

    async def _open(self, b: Backend) -> None:
        try:
            transport, _ = await asyncio.wait_for(self.loop.create_datagram_endpoint(
                lambda: _Socket(self), remote_addr=(b.host, b.port)), b.connect_timeout)
        except (OSError, TimeoutError) as exc:
            self.backend_error(exc)
            return
        if self.closed:
            transport.close()
            return
        self.transport = transport
        early, self.early, self.early_bytes = self.early, [], 0
        for datagram in early:
            self._send(datagram)

    # -- tunnel -> backend --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed or self.route is None:
            return
        self.last_active = time.monotonic()
        if self.transport is None:
            if len(self.early) >= EARLY_MAX or self.early_bytes + len(data) > EARLY_MAX_BYTES:
                self.udp.drop("connecting")
                return
            self.early.append(data)
            self.early_bytes += len(data)
            return
        self._send(data)

    def _send(self, data: bytes) -> None:
        t = self.transport
        assert t is not None and self.route is not None
        if t.is_closing():
            self.udp.drop("closed")
            return
        # asyncio's and uvloop's datagram transports both have it; typeshed lists it on Transport only.
        if cast(asyncio.WriteTransport, t).get_write_buffer_size() > SEND_BUFFER_MAX:
            self.udp.drop("backend_slow")
            return
        t.sendto(data)
        self.udp.relayed(self.route.name, "in", len(data))
        if self.meter is not None:
            self.meter.add_bytes(len(data), 0)

    def eof_received(self) -> None:
        self.stream.close()  # the edge forgot this client (idle): end ours, close the socket

    # -- backend -> tunnel --------------------------------------------------------------------------

    def from_backend(self, data: bytes) -> None:
        if self.closed or self.route is None:
            return
        self.last_active = time.monotonic()
        reason = self.stream.send_datagram(data)
        if reason is not None:
            self.udp.drop(reason)
            return
        self.udp.relayed(self.route.name, "out", len(data))
        if self.meter is not None:
            self.meter.add_bytes(0, len(data))

    def backend_error(self, exc: BaseException) -> None:
        if self.closed:
            return
        code = _code(exc)
        log.info("udp backend for %s failed: %s (%s)", self.stream.client_id, code, exc,
                 extra={"tunnel": self.tunnel, "client": self.stream.client_id,
                        "route": self.route.name if self.route else "-"})
        msg = ("the backend refused the datagram (ICMP port unreachable: nothing listens there)"
               if code == ErrorCode.CONNREFUSED else f"the backend failed ({code})")
        if self.meter is not None:
            self.meter.error(f"backend_{code.lower()}")
        self.stream.abort(msg, code)

    # -- end ----------------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        left = self.last_active + self.idle_timeout - time.monotonic()
        if left > 0:
            self.timer = self.loop.call_later(left, self._check_idle)
            return
        self.timer = None
        self.stream.close()

    def drain(self) -> None:
        """The sidecar is shutting down: end this client after DRAIN_IDLE of silence."""
        if self.closed or self.route is None:
            return
        self.idle_timeout = min(self.idle_timeout, DRAIN_IDLE)
        if self.timer is not None:
            self.timer.cancel()
        self._check_idle()

    def stream_closed(self, end: StreamEnd) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.transport is not None:
            self.transport.close()
        self.early.clear()
        if self.route is not None:
            self.udp.client_count(self.route.name, -1)
        if self.meter is not None:
            self.meter.close()
