"""One client stream on the sidecar: route it, connect its backend, pipe both ways with flow control.

`BackendHandler` is the stream's handler (see mproxy.tunnel.mux). Life of a stream:
1. routing: by the relay's service/serviceport/name; without a name, when a hostname route could apply,
   sniff TLS SNI or HTTP Host from the first bytes (bounded by MAX_SNIFF_BYTES). No route -> `error`
   E_NO_ROUTE, and no connection is attempted. A route with weighted backends picks one per stream
   (RouteTable.pick); its refuse share (or all weights 0) -> `error` E_NO_ROUTE too.
2. connecting: early data is held (bounded; past the stream buffer we ask the relay to pause the client).
   A refused, unreachable or slow backend -> `error` with the errno-style code; the tunnel carries on.
3. open: an optional PROXY v1/v2 header with the client address, then the early data, then both ways:
   relay data -> backend socket; backend data -> stream.write(). A backend whose write buffer passes the
   high-water mark makes us ask the relay to pause that client; a relay pause stops reading the backend.
   `end` both ways becomes a TCP half-close (write_eof) where the socket allows it.
   A route with `http` is served by an HTTP router of this process (mproxy.sidecar.l7): the "backend"
   is then our end of a socket pair whose other end the router serves; everything above applies as is.
   The E_BUFFER rule (mproxy.buffers, per stream and per tunnel) bounds what a client that keeps sending
   while paused can make us hold; a backend that resets while we are not reading it is noticed at once
   (mproxy.sockwatch) and the client is reset too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from dataclasses import dataclass, field
from typing import Protocol, cast

from mproxy.buffers import BufferRule, TunnelBuffers, buffers_of
from mproxy.codec import MAX_SNIFF_BYTES, NEED_MORE, sniff_http_host, sniff_sni
from mproxy.codec.errors import ErrorCode
from mproxy.metrics.sidecar import SidecarMetrics, StreamMeter
from mproxy.proxyproto import encode as encode_proxy
from mproxy.routing import Backend, Route, RouteTable
from mproxy.sockwatch import PausedWatch
from mproxy.tunnel import Stream, StreamEnd, StreamHandler

__all__ = ["BackendHandler", "BackendOptions", "HttpFront"]

log = logging.getLogger("mproxy.sidecar")



@dataclass(frozen=True, slots=True)
class BackendOptions:
    stream_buffer: int = 256 * 1024  # backend write-buffer high water; relay pause above it
    # A client that keeps sending while paused is cut off (E_BUFFER). Data already in flight when our pause
    # reaches the relay is legitimate: on loopback with autotuned TCP buffers that is easily 10 MiB. So past
    # `soft_limit` buffered bytes a stream is cut off only once its pause is `grace` seconds old, and past
    # `hard_limit` at once.
    soft_buffer: int = 8 * 1024 * 1024
    hard_buffer: int = 64 * 1024 * 1024
    grace: float = 2.0
    tunnel_buffer: int = 256 * 1024 * 1024  # all streams of one tunnel together
    rule: BufferRule = field(init=False, compare=False)  # built once: every stream of a config shares it

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", BufferRule(
            soft=self.soft_limit, hard=self.hard_limit, grace=self.grace,
            tunnel=max(self.tunnel_buffer, self.soft_limit), allowance=self.stream_buffer))

    @property
    def soft_limit(self) -> int:
        return max(self.soft_buffer, 8 * self.stream_buffer)

    @property
    def hard_limit(self) -> int:
        return max(self.hard_buffer, self.soft_limit)


class HttpFront(Protocol):
    """Where a stream routed to an HTTP router goes (mproxy.sidecar.l7.front.L7Front)."""

    def open(self, router: str, stream: Stream) -> socket.socket:
        """Our end of a new connection to `router`, which serves the stream's requests; raises OSError
        when there is no such router."""
        ...


def _errno_code(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "ETIMEDOUT"
    if isinstance(exc, socket.gaierror):
        return "ENOTFOUND"
    num = getattr(exc, "errno", None)
    if isinstance(num, int) and num in errno.errorcode:
        return errno.errorcode[num]
    return ErrorCode.BACKEND


class _BackendProtocol(asyncio.Protocol):
    """The backend socket's protocol; forwards everything to its BackendHandler."""

    __slots__ = ("_owner", "_write")

    def __init__(self, owner: BackendHandler) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport
        transport = cast(asyncio.Transport, transport)
        self._write = self._owner.stream.write
        self._owner._connected(transport)

    def data_received(self, data: bytes) -> None:
        # asyncio reads up to 256 KiB per call; the mux keeps these bytes (no copy) until sent.
        self._write(data)

    def eof_received(self) -> bool:
        self._owner._backend_eof()
        return True  # keep the socket open for the other direction (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._backend_lost(exc)

    def pause_writing(self) -> None:
        self._owner._backend_full(True)

    def resume_writing(self) -> None:
        self._owner._backend_full(False)


class BackendHandler(StreamHandler):
    __slots__ = (
        "_buffers",
        "_connect_task",
        "_early",
        "_early_size",
        "_fin_seen",
        "_flushed_in",
        "_flushed_out",
        "_peer_eof",
        "_read_paused",
        "_timed_out",
        "_watch",
        "backend",
        "front",
        "meter",
        "metrics",
        "opts",
        "route",
        "state",
        "stream",
        "table",
        "transport",
        "tunnel",
    )

    def __init__(self, stream: Stream, table: RouteTable, metrics: SidecarMetrics, opts: BackendOptions,
                 tunnel: str, front: HttpFront | None = None) -> None:
        self.stream = stream
        self.front = front
        self.table = table
        self.metrics = metrics
        self.opts = opts
        self.tunnel = tunnel
        self.state = "routing"
        self.route: Route | None = None
        self.backend: Backend | None = None  # the route's backend this stream picked
        self.transport: asyncio.Transport | None = None
        self.meter: StreamMeter | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._peer_eof = False
        self._read_paused = False  # the mux asked us to stop reading the backend
        self._connect_task: asyncio.Task[None] | None = None
        self._timed_out = False  # the connect timer fired (it cancels _connect_task)
        self._flushed_in = 0
        self._flushed_out = 0
        self._buffers: TunnelBuffers = buffers_of(stream.mux, opts.rule)
        self._watch: PausedWatch | None = None
        self._fin_seen = False  # the backend sent FIN while paused: read on until its EOF
        if stream.name or not table.wants_name(stream.service, _port(stream.serviceport)):
            self._route(stream.name)

    def _extra(self) -> dict[str, str]:
        return {"tunnel": self.tunnel, "client": self.stream.client_id,
                "route": self.route.name if self.route else "-"}

    # -- routing and connecting -------------------------------------------------------------------

    def _sniff(self) -> None:
        data = b"".join(self._early)
        if len(self._early) > 1:
            self._early = [data]
        sni = sniff_sni(data)
        if isinstance(sni, str):
            self._route(sni)
            return
        host = sniff_http_host(data)
        if isinstance(host, str):
            self._route(host)
            return
        if (sni is NEED_MORE or host is NEED_MORE) and not self._peer_eof and len(data) < MAX_SNIFF_BYTES:
            return
        self._route("")

    def _route(self, name: str) -> None:
        s = self.stream
        route = self.table.match(s.service, s.serviceport, name)
        if route is None:
            self.state = "closed"
            self.metrics.refuse("no_route")
            log.info("no route for service=%s port=%s name=%r: refused", s.service, s.serviceport, name,
                     extra=self._extra())
            s.abort(f"no route for service {s.service!r} port {s.serviceport!r} name {name!r}",
                    ErrorCode.NO_ROUTE)
            return
        backend = None if route.http is not None else self.table.pick(route)
        if backend is None and route.http is None:
            self.state = "closed"
            self.metrics.refuse("refused_backend")
            log.info("route %s refused the stream (its refuse share, or every backend weight 0)", route.name,
                     extra=self._extra())
            s.abort(f"route {route.name!r} refuses this stream (a refused share of its backends, or every "
                    "backend weight 0)", ErrorCode.NO_ROUTE)
            return
        self.route, self.backend = route, backend
        s.route = route.name
        self.state = "connecting"
        self.meter = self.metrics.stream_opened(route.name, s.addr.address)
        self._connect_task = asyncio.get_running_loop().create_task(self._connect(route, backend))

    async def _connect(self, route: Route, b: Backend | None) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A timer that cancels this task, not asyncio.timeout(): every stream opens one connect, and the
        # context manager's Timeout object and checks cost about as much again as this handle (~10 us).
        timer = loop.call_later(_timeout(b), self._connect_expired)
        try:
            if b is None:  # an HTTP router's stream: one end of a socket pair, the router holds the other
                if self.front is None:
                    raise ConnectionRefusedError(errno.ECONNREFUSED, "no HTTP routers in this process")
                sock = self.front.open(route.http or "", self.stream)
                try:
                    await loop.create_connection(lambda: _BackendProtocol(self), sock=sock)
                except BaseException:  # the transport never took the socket over
                    sock.close()
                    raise
            else:
                await loop.create_connection(lambda: _BackendProtocol(self), b.host, b.port)
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._connect_failed(route, b, TimeoutError())
            return
        except OSError as exc:
            self._connect_failed(route, b, exc)
            return
        finally:
            timer.cancel()
        self.metrics.observe_connect(route.name, loop.time() - started)

    def _connect_expired(self) -> None:
        task = self._connect_task
        if task is not None and not task.done():
            self._timed_out = True
            task.cancel()

    def _connect_failed(self, route: Route, b: Backend | None, exc: OSError) -> None:
        if self.state == "closed":
            return
        where = f"HTTP router {route.http}" if b is None else f"{b.host}:{b.port}"
        code = _errno_code(exc)
        detail = (f"timed out after {_timeout(b):g} s" if isinstance(exc, TimeoutError)
                  else (exc.strerror or str(exc)))
        log.warning("backend %s unreachable: %s", where, detail, extra=self._extra())
        if self.meter:
            self.meter.error("backend_" + code.lower())
        self.stream.abort(f"backend {where} of route {route.name!r}: {detail}", code)

    def _connected(self, transport: asyncio.Transport) -> None:
        if self.state == "closed":
            transport.abort()
            return
        self.transport = transport
        self._watch = PausedWatch(transport, on_reset=self._backend_reset, on_fin=self._backend_fin)
        self.state = "open"
        # asyncio already sets TCP_NODELAY on TCP transports.
        high = self.opts.stream_buffer
        transport.set_write_buffer_limits(high=high, low=high // 4)
        b = self.backend
        if b is not None and b.proxy_protocol != "none":
            peer = transport.get_extra_info("peername")
            dst = (peer[0], peer[1]) if isinstance(peer, tuple) else None
            src = (self.stream.addr.address, _port(self.stream.addr.port) or 0)
            transport.write(encode_proxy(b.proxy_protocol, src, dst))
        if self._early:
            transport.writelines(self._early)
            self._early = []
            self._early_size = 0
        if self.stream.reading_paused and transport.get_write_buffer_size() <= high:
            self._resume_relay()
        if self._read_paused:
            transport.pause_reading()
            self._watch.start()
        if self._peer_eof and transport.can_write_eof():
            transport.write_eof()

    # -- relay -> backend (StreamHandler) ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        t = self.transport
        if t is not None:
            t.write(data)
            self._buffers.update(self, t.get_write_buffer_size())
            return
        if self.state == "closed":
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size > self.opts.stream_buffer and not self.stream.reading_paused:
            self._pause_relay()
        if self._buffers.update(self, self._early_size):
            return
        if self.state == "routing":
            self._sniff()

    # -- mproxy.buffers.Holder --------------------------------------------------------------------

    def buffered_bytes(self) -> int:
        t = self.transport
        if t is not None:
            return 0 if t.is_closing() else t.get_write_buffer_size()
        return self._early_size

    def overflow(self, reason: str, limit: str) -> None:
        log.warning("client kept sending while paused (%s); cutting it off", reason, extra=self._extra())
        if self.meter:
            self.meter.error("buffer_overflow")
        self._buffers.forget(self)
        self.stream.abort(f"the client kept sending while paused: {reason}", ErrorCode.BUFFER)

    def _pause_relay(self) -> None:
        if not self.stream.reading_paused:
            self._buffers.paused(self)  # the ledger times the pause
            self.stream.pause_reading()
            if self.meter:
                self.meter.pause("relay")

    def _resume_relay(self) -> None:
        self._buffers.resumed(self)
        self.stream.resume_reading()

    def eof_received(self) -> None:
        self._peer_eof = True
        if self.state == "routing":
            self._sniff()
        t = self.transport
        if t is not None and not t.is_closing() and t.can_write_eof():
            t.write_eof()

    def error_received(self, message: str, code: str) -> None:
        if self.meter:
            self.meter.error("client_" + (code or "error").lower()[:32])

    def pause_writing(self) -> None:
        self._read_paused = True
        if self.transport is not None and not self.transport.is_closing() and not self._fin_seen:
            self.transport.pause_reading()
            if self._watch is not None:
                self._watch.start()
        if self.meter:
            self.meter.pause("backend")

    def resume_writing(self) -> None:
        self._read_paused = False
        if self._watch is not None:
            self._watch.stop()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _backend_reset(self) -> None:
        log.info("backend reset the connection while paused; ending the stream", extra=self._extra())
        if self.meter:
            self.meter.error("backend_reset")
        self.stream.abort("backend connection reset", "ECONNRESET")

    def _backend_fin(self) -> None:
        # The backend can send no more: read the bounded rest of its kernel buffer, then its EOF.
        self._fin_seen = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def stream_closed(self, end: StreamEnd) -> None:
        self.state = "closed"
        self._buffers.forget(self)
        if self._watch is not None:
            self._watch.stop()
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        t = self.transport
        if t is not None and not t.is_closing():
            if end.clean:
                t.close()
            else:
                t.abort()
        self._early = []
        self.flush_metrics()
        if self.meter:
            if end.code == ErrorCode.IDLE:
                self.meter.error("idle")
            elif end.origin == "tunnel":
                self.meter.error("tunnel_closed")
            self.meter.close()

    def flush_metrics(self) -> None:
        if self.meter is None:
            return
        s = self.stream
        din, dout = s.bytes_in - self._flushed_in, s.bytes_out - self._flushed_out
        if din or dout:
            self._flushed_in, self._flushed_out = s.bytes_in, s.bytes_out
            self.meter.add_bytes(din, dout)

    # -- backend events ---------------------------------------------------------------------------

    def _backend_eof(self) -> None:
        if self.route is not None and self.route.http is not None:
            # An HTTP router closes a connection whole, never half: end the stream both ways, so a client
            # that keeps its side open does not hold it (and a drain) until the idle timeout.
            self.stream.close()
        else:
            self.stream.write_eof()

    def _backend_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.stream.closed:
            return
        if exc is not None:
            if self.meter:
                self.meter.error("backend_reset")
            self.stream.abort(f"backend connection lost: {exc}", _errno_code(exc))
        else:
            self.stream.close()

    def _backend_full(self, full: bool) -> None:
        if full:
            self._pause_relay()
        else:
            self._resume_relay()


def _timeout(b: Backend | None) -> float:
    return b.connect_timeout if b is not None else 5.0  # None: an HTTP router of this process


def _port(value: str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
