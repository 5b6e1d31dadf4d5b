"""One public client connection at the edge, from accept to close: `EdgeClient`.

The listener makes one `EdgeClient` per accepted socket; it is the socket's asyncio Protocol from then on,
so everything about this client lives here, in order:

1. Preamble, under one deadline (sniffTimeoutSeconds): the PROXY protocol header when the peer is a
   trusted load balancer; per-address admission (`ClientLimiter`, released when the client ends); then, by
   listener kind, the first bytes are read until the TLS SNI or HTTP Host is known (raw TCP needs none).
   TLS is never terminated: the bytes read are kept and sent first. Until routed, the client counts in
   `PendingClients` (shed oldest first past the cap). A refused client is told in its own protocol
   (`refusal_bytes`: a TLS alert, an HTTP status, or a close) and counted under a reject reason.
2. Routing: `router.open(client)` picks a tunnel and opens the stream (the relay's job; it raises
   `Refused` when nobody can take the client). It raises `Forwarding` instead when no tunnel here takes
   the client but a peer edge may (mproxy.edge.forward): the client stops reading and hands itself to
   `router.forward`, which sends the bytes read so far (and any read until the peer answers) and then owns
   the socket; it ends with `forward_refused` (refused as usual) or `forward_ended`. A client a peer
   forwarded here starts at this step (`adopt`: its address, port and name come from the peer's verified
   header) and is routed to local tunnels only (its Front is `forwarded`).
3. Relaying, both ways, with flow control and no task or copy per chunk:
   - client -> tunnel: `data_received` goes straight into `stream.write()`. When the stream's queue is
     full, or the sidecar sent `pause` for this client, the socket stops being read until `resume_writing`.
   - tunnel -> client: data goes straight to the transport. When more than the edge's streamBufferBytes
     wait for a slow client, the sidecar is sent `pause` for this one client, `resume` once drained.
   - Buffer limits (mproxy.buffers): bytes the sidecar keeps sending while paused (or a hostile tunnel
     that ignores `pause`) are bounded per stream and per tunnel; past them the stream is cut (E_BUFFER).
   - A client that resets or closes while its reads are paused is noticed within a second
     (mproxy.sockwatch), not at the idle timeout.
   - A stream that fails after the client got data and before the sidecar's `end` ends with a TCP reset,
     so the client cannot take a truncated answer for a whole one; after `end`, queued bytes are flushed,
     then a FIN (and a reset after CLOSE_GRACE if the client does not take them).
4. Replay: until the sidecar answers anything, the client's bytes are kept (up to REPLAY_MAX), so a stream
   the sidecar refuses before dialling a backend (E_SHUTTING_DOWN, E_LIMIT), or a tunnel that went away
   (1001) right after the `connection` frame, moves to another tunnel with the same bytes.
5. Accounting: bytes both ways over every attempt (`uncounted()` for the periodic flush), and one
   `router.done(client, result)` at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from mproxy import proxyproto
from mproxy.buffers import BufferRule, TunnelBuffers, buffers_of
from mproxy.codec import NEED_MORE, Address, address_from_peername, sniff_http_host, sniff_sni
from mproxy.codec.errors import ErrorCode, LocalProtocolError
from mproxy.edge.limits import ClientLimiter, PendingClients
from mproxy.edge.refusal import Forwarding, Refused, refusal_bytes
from mproxy.sockwatch import PausedWatch, reset
from mproxy.tunnel.mux import Stream, StreamEnd, StreamHandler
from mproxy.tunnel.ws import CLOSE_GOING_AWAY

__all__ = ["CLOSE_GRACE", "REPLAY_MAX", "EdgeClient", "Front", "Router", "Tunnel"]

log = logging.getLogger("mproxy.edge")

CLOSE_GRACE = 30.0  # a closed stream's client gets this long to take its last bytes, then is reset
REPLAY_MAX = 256 * 1024  # client bytes kept until the sidecar first answers, to retry elsewhere
RETRY_CODES = frozenset({ErrorCode.SHUTTING_DOWN, ErrorCode.LIMIT})
# A tunnel closing with 1001 (a sidecar going away after its drain) may never have read a `connection`
# the edge sent just before the close; such a stream, opened this recently and never answered, cannot
# have reached a backend (a drain waits for streams it accepted), so it is replayed elsewhere too.
FRESH_SECONDS = 1.0
PROXY_HEADER_MAX = 4096  # bytes read for a PROXY header before it is refused as too long
REFUSAL_LINGER_SECONDS = 2.0  # a refused client that does not take its answer and close is dropped then

# The client's phases; `data_received` checks the hot one first. _FORWARDING: handed to a peer edge.
_RELAYING, _PROXY, _SNIFF, _ROUTING, _FORWARDING, _DONE = range(6)


class Tunnel(Protocol):
    """A tunnel as a client sees it (the relay's TunnelSession)."""

    id: int
    draining: bool


class Router(Protocol):
    """What a client needs from the relay."""

    stream_buffer: int  # the edge's limits.streamBufferBytes: a slow client's write-buffer high water
    buffer_rule: BufferRule

    def open(self, client: EdgeClient) -> Stream:
        """Open a stream for `client` on a tunnel it has not tried (`client.tried`), with
        `client.handler`, and set `client.tunnel`; raise Refused when no tunnel (left) can take it, or
        Forwarding when a peer edge may (the client then calls `forward`)."""

    def forward(self, client: EdgeClient, signal: Forwarding) -> None:
        """Take over `client`'s socket for a peer edge; it calls `client.forward_refused` or
        `client.forward_ended` exactly once."""

    def refused(self, client: EdgeClient, tunnel: Tunnel, code: str) -> None:
        """`tunnel` refused `client` before answering anything (`code`); it is retried elsewhere."""

    def done(self, client: EdgeClient, result: str) -> None:
        """`client` is finished: ok | error | tunnel_closed | rejected (already counted as a reject)."""

    def rejected(self, kind: str, reason: str) -> None:
        """A client of a `kind` listener was refused for `reason` (a metric label)."""

    def buffer_cut(self, limit: str) -> None:
        """A stream was cut by buffer rule `limit` (mproxy.buffers.CUT_LIMITS)."""


@dataclass(eq=False, slots=True)
class Front:
    """What every client of one listener shares."""

    kind: str  # tls | http | tcp
    service: str  # https | http | tcp, as frames carry it
    public_port: int  # the port frames carry (set once the listener is bound)
    proxy_protocol: bool
    trusted: Callable[[str], bool]  # whether a peer address may send a PROXY header
    sniff_timeout: float
    limiter: ClientLimiter
    pending: PendingClients
    router: Router
    unrouted: set[EdgeClient]  # clients still in their preamble (the listener's close ends them)
    forwarded: bool = False  # clients a peer edge forwarded here: local tunnels only, never forwarded again
    tls_alert: bool = True  # a refused TLS client gets a fatal alert (False: tlsRefusal: close)
    group: str | None = None  # the listener's group: its clients go only to tunnels of that group
    on_lost: Callable[[EdgeClient], None] | None = None  # called once when a client's socket is gone


class _StreamSide(StreamHandler):
    """The stream's handler: what the multiplexer calls, handed to the client."""

    def __init__(self, client: EdgeClient) -> None:
        self.c = client

    def data_received(self, data: bytes) -> None:
        self.c.to_client(data)

    def eof_received(self) -> None:
        self.c.tunnel_eof()

    def pause_writing(self) -> None:
        self.c.set_reading(False)

    def resume_writing(self) -> None:
        self.c.set_reading(True)

    def stream_closed(self, end: StreamEnd) -> None:
        self.c.stream_closed(end)


class EdgeClient(asyncio.Protocol):
    """One public client socket; see the module docstring."""

    __slots__ = (  # one per client, thousands idle: no __dict__
        "_admitted", "_attempt_over", "_buffers", "_counted_in", "_counted_out", "_folded", "_lost",
        "_peer_fin", "_phase", "_replay", "_timer", "_watch", "addr", "attempts", "bytes_in", "bytes_out",
        "client_ended", "end", "front", "handler", "kind", "label", "name", "received_any", "retry",
        "router", "service", "serviceport", "started", "stream", "transport", "tried", "tunnel",
        "tunnel_ended",
    )

    def __init__(self, front: Front) -> None:
        self.front = front
        self.router = front.router
        self.kind = front.kind
        self.service = front.service
        self.serviceport = front.public_port
        self.transport: asyncio.Transport | None = None
        self.addr = Address("IPv4", "0.0.0.0", "0")  # the real client, once known
        self.name = ""  # SNI or Host ("" for raw TCP)
        self.handler = _StreamSide(self)
        self._phase = _PROXY
        self._timer: asyncio.TimerHandle | None = None
        self._admitted = False
        self._lost = False
        # Bytes read and not yet answered by the sidecar: the preamble's, then every one sent through,
        # so a refused stream can be replayed elsewhere; None once answered (or past REPLAY_MAX).
        self._replay: bytearray | None = bytearray()
        self.client_ended = False  # the client sent FIN
        self._peer_fin = False  # the client sent FIN while paused: read on until its EOF
        self._watch: PausedWatch | None = None
        # routing, over every attempt (a replay moves the client to another tunnel)
        self.started = 0.0
        self.attempts = 0
        self.tried: set[int] = set()  # id() of the tunnels tried
        self.label = ""  # the metric name label (the granted domain)
        self.tunnel: Tunnel | None = None
        # the current attempt
        self.stream: Stream | None = None
        self._buffers: TunnelBuffers | None = None
        self.end: StreamEnd | None = None  # how the current attempt's stream ended
        self.received_any = False
        self.tunnel_ended = False  # the sidecar sent `end`: the client's answer is complete
        self.retry = False
        self._attempt_over = False
        # byte counters
        self.bytes_in = 0  # client -> tunnel, over finished attempts
        self.bytes_out = 0  # tunnel -> client, over finished attempts
        self._counted_in = 0  # already added to the bytes counter
        self._counted_out = 0
        self._folded = True  # the current stream's bytes are already in bytes_in/bytes_out

    def __repr__(self) -> str:
        return f"<EdgeClient {self.addr.client_id} {self.kind}:{self.serviceport} {self.name!r}>"

    # -- preamble -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # An asyncio transport or uvloop's (not an asyncio.Transport subclass, same interface).
        t = self.transport = cast(asyncio.Transport, transport)
        front = self.front
        front.unrouted.add(self)
        front.pending.add(id(self), self._shed)
        try:
            self.addr = address_from_peername(t.get_extra_info("peername"))
        except LocalProtocolError as exc:
            self._gone_early(exc)
            return
        self._timer = asyncio.get_running_loop().call_later(front.sniff_timeout, self._timed_out)
        if front.proxy_protocol and front.trusted(self.addr.address):
            return  # wait for the header
        self._step(self._admit)

    def _step(self, action: Callable[[], None]) -> None:
        """Run one preamble step; whatever it raises costs this client only."""
        try:
            action()
        except Refused as exc:
            self._refuse(exc)
        except (ConnectionError, LocalProtocolError) as exc:
            self._gone_early(exc)
        except Exception:  # a bug must cost this one client, not the listener
            log.exception("internal error while serving a %s client", self.kind)
            self._end_unrouted(abort=True)

    def _proxy_header(self) -> None:
        buf = self._replay
        assert buf is not None
        try:
            header = proxyproto.decode(bytes(buf))
        except proxyproto.ProxyProtocolError as exc:
            raise Refused("bad_proxy_header", f"bad PROXY protocol header: {exc}") from None
        if header is proxyproto.NEED_MORE:
            if len(buf) > PROXY_HEADER_MAX:
                raise Refused("bad_proxy_header", "PROXY protocol header too long")
            return
        assert isinstance(header, proxyproto.ProxyHeader)
        del buf[:header.length]
        if header.source is not None:  # not LOCAL / UNKNOWN (the balancer's own connection: health check)
            self.addr = address_from_peername(header.source)
        self._admit()

    def _admit(self) -> None:
        reason = self.front.limiter.admit(self.addr.address)
        if reason is not None:
            raise Refused(reason, "too many connections from your address; try again later")
        self._admitted = True
        self._phase = _SNIFF
        if self.kind == "tcp":
            self._route()
        elif self._replay:
            self._sniff()

    def _sniff(self) -> None:
        buf = self._replay
        assert buf is not None
        result = (sniff_sni if self.kind == "tls" else sniff_http_host)(buf)
        if result is None:
            if self.kind == "tls":
                if buf[:1] != b"\x16":
                    raise Refused("not_tls", "this port only accepts TLS")
                raise Refused("no_name", "the TLS ClientHello carries no server name (SNI)")
            raise Refused("no_name", "the request has no usable Host header")
        if result is not NEED_MORE:
            assert isinstance(result, str)
            self.name = result
            self._route()

    def _timed_out(self) -> None:
        self._timer = None
        message = "timed out waiting for the first bytes"
        if self._phase == _PROXY:
            self._refuse(Refused("bad_proxy_header", message))
        elif self._phase == _SNIFF:
            self._refuse(Refused("sniff_timeout", message))

    def _shed(self) -> None:
        if self._phase == _DONE:  # refused already, lingering: no second reject
            self._drop()
            return
        log.debug("too many connections not yet routed; shedding the oldest on the %s listener", self.kind)
        self.router.rejected(self.kind, "overloaded")
        self._end_unrouted(abort=True)

    def _gone_early(self, exc: Exception) -> None:
        log.debug("client on %s listener went away early: %s", self.kind, exc)
        self._end_unrouted()

    def _refuse(self, exc: Refused) -> None:
        self.router.rejected(self.kind, exc.reason)
        log.info("refused a %s client: %s (%s)", self.kind, exc.reason, exc)
        payload = refusal_bytes(self.kind, exc.reason, str(exc), tls_alert=self.front.tls_alert)
        t = self.transport
        if t is None or self._lost or t.is_closing():
            self._end_unrouted()
            return
        if payload:
            t.write(payload)
        self._linger(t)

    def _linger(self, t: asyncio.Transport) -> None:
        """After a refusal: send FIN behind the answer and read on (discarding) until the client closes,
        for at most REFUSAL_LINGER_SECONDS. Closing with the client's request unread (it is often still
        arriving) would make the kernel reset the connection, and a reset can destroy the answer before
        the client reads it. The socket stays counted in PendingClients, so lingering ones are shed
        first under a flood."""
        self._phase = _DONE
        self._release()
        if self._timer is not None:
            self._timer.cancel()
        self.front.unrouted.discard(self)
        try:
            t.write_eof()
        except (OSError, RuntimeError):
            self._end_unrouted(abort=True)
            return
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_SECONDS, self._drop)

    def _end_unrouted(self, *, abort: bool = False) -> None:
        """End a client that was never relayed: free its admission and pending slot, close the socket."""
        self._phase = _DONE
        self._leave_preamble()
        self._release()
        t = self.transport
        if t is None or self._lost:
            return
        if abort:
            t.abort()
        else:
            t.close()

    def _drop(self) -> None:
        if not self._lost and self.transport is not None:
            self.transport.abort()

    def _leave_preamble(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.front.pending.discard(id(self))
        self.front.unrouted.discard(self)

    def _release(self) -> None:
        if self._admitted:
            self._admitted = False
            self.front.limiter.release(self.addr.address)

    def cancel(self) -> None:
        """The listener is closing: end this client if it is still in its preamble."""
        if self._phase in (_PROXY, _SNIFF):
            self._end_unrouted()

    # -- routing ------------------------------------------------------------------------------------

    def _route(self) -> None:
        self._phase = _ROUTING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.front.unrouted.discard(self)
        self.started = time.monotonic()
        try:
            stream = self.router.open(self)  # Refused: answered as in the preamble
        except Forwarding as signal:
            self._forward(signal)
            return
        self.front.pending.discard(id(self))  # (a refused one stays counted while it lingers)
        t = self.transport
        assert t is not None
        high = self.router.stream_buffer
        t.set_write_buffer_limits(high=high, low=max(high // 4, 1))
        self._watch = PausedWatch(t, on_reset=self._client_reset, on_fin=self._client_fin)
        self._attach(stream)

    def _forward(self, signal: Forwarding) -> None:
        # Routed, to a peer: out of the pending count. Not read until the peer answers (what was read is
        # in the replay buffer, sent after the PROXY header); then the forwarder owns the socket.
        self._phase = _FORWARDING
        self.front.pending.discard(id(self))
        if self._replay is None:
            self._replay = bytearray()
        # Soon, not now: a raw TCP client gets here from connection_made, and uvloop's transport starts
        # reading right after that call even when it was paused inside it (what it reads then is kept).
        asyncio.get_running_loop().call_soon(self.set_reading, False)
        self.router.forward(self, signal)

    def _forward_keep(self, data: bytes) -> None:
        replay = self._replay
        assert replay is not None
        replay += data
        if len(replay) > REPLAY_MAX:
            self.set_reading(False)  # bounded: the rest waits in the kernel until the pipe starts

    def forward_refused(self, refusal: Refused) -> None:
        """No peer took this client: it is refused as if there were no peers."""
        if self._phase == _FORWARDING:
            self.set_reading(True)  # its refusal lingers reading (and discarding) until it closes
            self._refuse(refusal)

    def forward_ended(self) -> None:
        """The pipe to the peer edge ended and closed the socket: free the admission slot."""
        self._phase = _DONE
        self._release()

    def read_so_far(self, start: int = 0) -> bytes:
        """The bytes this client sent so far, from offset `start` (what a forward sends after its header:
        the preamble's, then any read while the peer had not answered yet)."""
        return bytes(self._replay[start:]) if self._replay is not None else b""

    def adopt(self, transport: asyncio.Transport, addr: Address, serviceport: int, name: str,
              initial: bytes) -> None:
        """Serve a client a peer edge forwarded here (the front's `forwarded`): its address, port, name and
        first bytes come from the verified PROXY header (mproxy.edge.forward), so there is no preamble."""
        self.transport = transport
        self.addr, self.serviceport, self.name = addr, serviceport, name
        self._replay = bytearray(initial)
        self._step(self._route)

    def _attach(self, stream: Stream) -> None:
        """Start relaying on `stream`: the bytes read so far (and a client FIN already seen) go first."""
        self._phase = _RELAYING
        self.stream = stream
        self._buffers = buffers_of(stream.mux, self.router.buffer_rule)
        self.end = None
        self.tunnel_ended = self.retry = self._attempt_over = False
        self._folded = False
        replay = self._replay
        if replay:
            stream.write(bytes(replay))
            if len(replay) > REPLAY_MAX:
                self._replay = None
        if self.client_ended:
            stream.write_eof()
        self.set_reading(not stream.writing_paused)

    # -- client -> tunnel ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _RELAYING:
            if self._replay is not None:
                self._keep(data)
            stream = self.stream
            if stream is not None and not stream.closed:
                stream.write(data)
        elif phase in (_PROXY, _SNIFF):
            replay = self._replay
            assert replay is not None
            replay += data
            self._step(self._proxy_header if phase == _PROXY else self._sniff)
        elif phase == _ROUTING and self._replay is not None:  # between attempts: kept for the replay
            self._keep(data)
        elif phase == _FORWARDING:  # until the peer answers; sent after what the forwarder sent already
            self._forward_keep(data)

    def _keep(self, data: bytes) -> None:
        """Keep sent bytes for a replay, up to REPLAY_MAX (past it the client cannot move any more)."""
        replay = self._replay
        assert replay is not None
        if len(replay) + len(data) > REPLAY_MAX:
            self._replay = None
        else:
            replay += data

    def eof_received(self) -> bool:
        if self._phase in (_PROXY, _SNIFF):
            self._gone_early(ConnectionResetError("client closed before sending enough to route it"))
            return False
        if self._phase == _DONE:
            return False  # a refused client took its answer and closed: close too
        if self._phase == _FORWARDING:
            self.client_ended = True  # passed on once the peer took the client
            return True
        self.client_ended = True
        stream = self.stream
        if self._phase == _RELAYING and stream is not None and not stream.closed:
            stream.write_eof()
        return True  # keep the socket half-open: the answer may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self.front.on_lost is not None:
            self.front.on_lost(self)
        if self._watch is not None:
            self._watch.stop()
        self.front.pending.discard(id(self))  # (a refused one lingers counted there)
        if self.stream is None:  # never relayed (refused, lingering, or still in its preamble)
            self._phase = _DONE
            self._leave_preamble()
            self._release()
            return
        stream = self.stream
        if stream is not None and not stream.closed:
            if exc is not None or not self.client_ended:
                reason = type(exc).__name__ if exc else "closed without EOF"
                stream.abort(f"client connection lost ({reason})", ErrorCode.CLIENT)
            else:
                stream.close()  # our `end` is queued; stop waiting for the sidecar's
        self._finish_attempt()

    def set_reading(self, on: bool) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        on = on or self._peer_fin
        try:
            reading = t.is_reading()
            if on and not reading:
                t.resume_reading()
            elif not on and reading:
                t.pause_reading()
        except (AttributeError, RuntimeError):
            return
        if self._watch is not None:
            if on:
                self._watch.stop()
            else:
                self._watch.start()

    def _client_reset(self) -> None:
        stream = self.stream
        log.info("client %s reset its connection while paused; ending its stream", self.addr.client_id)
        if stream is not None and not stream.closed:
            stream.abort("client connection reset while paused", ErrorCode.CLIENT)
        if self.transport is not None:
            self.transport.abort()
        self._finish_attempt()

    def _client_fin(self) -> None:
        # The client can send no more: what is left in the kernel buffer is bounded, and reading it
        # delivers its EOF in order, as for a client that was never paused.
        self._peer_fin = True
        self.set_reading(True)

    def pause_writing(self) -> None:
        self._client_slow(True)

    def resume_writing(self) -> None:
        self._client_slow(False)

    def _client_slow(self, slow: bool) -> None:
        stream = self.stream
        if stream is None or stream.closed:
            return
        if slow:
            stream.pause_reading()
            if self._buffers is not None:
                self._buffers.paused(self)
        else:
            stream.resume_reading()
            if self._buffers is not None:
                self._buffers.resumed(self)

    # -- tunnel -> client ---------------------------------------------------------------------------

    def to_client(self, data: bytes) -> None:
        if not self.received_any:
            self.received_any = True
            self._replay = None  # the sidecar answered: this client can no longer move elsewhere
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)
            if self._buffers is not None:
                self._buffers.update(self, t.get_write_buffer_size())

    def tunnel_eof(self) -> None:
        self.tunnel_ended = True
        t = self.transport
        if t is not None and not t.is_closing() and t.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                t.write_eof()

    # -- mproxy.buffers.Holder ----------------------------------------------------------------------

    def buffered_bytes(self) -> int:
        t = self.transport
        return 0 if t is None or t.is_closing() else t.get_write_buffer_size()

    def overflow(self, reason: str, limit: str) -> None:
        self.router.buffer_cut(limit)
        stream = self.stream
        log.warning("client %s: the tunnel kept sending while paused (%s); cutting the stream",
                    self.addr.client_id, reason)
        if stream is not None and not stream.closed:
            stream.abort(f"the tunnel kept sending while paused: {reason}", ErrorCode.BUFFER)
        elif self.transport is not None:
            reset(self.transport)

    # -- end of an attempt --------------------------------------------------------------------------

    def _can_retry(self, end: StreamEnd) -> bool:
        if self._replay is None or self.received_any or self.stream is None:
            return False
        if end.origin == "peer":
            return end.code in RETRY_CODES
        if end.origin == "tunnel" and end.code == "peer_closed" and end.close_code == CLOSE_GOING_AWAY:
            return self.stream.mux.now() - self.stream.opened_at < FRESH_SECONDS
        return False

    def stream_closed(self, end: StreamEnd) -> None:
        self.end = end
        self._phase = _ROUTING  # until the attempt is finished: kept for a replay, or ended
        if self._watch is not None:
            self._watch.stop()
        if self._buffers is not None:
            self._buffers.forget(self)
        t = self.transport
        assert t is not None
        if not t.is_closing() and self._can_retry(end):
            self.retry = True  # leave the client open: it is replayed onto another tunnel
            self._finish_attempt()
            return
        if end.origin == "peer" and not self.received_any and not t.is_closing():
            # Nothing reached the client yet, so it can still get a proper answer in its protocol.
            # Only the error code goes out: the sidecar's message may name internal hosts.
            code = end.code[:40]
            payload = refusal_bytes(self.kind, "backend_failed",
                                    f"the service behind this name is unavailable ({code})",
                                    tls_alert=self.front.tls_alert)
            if payload:
                t.write(payload)
            self._finish_attempt()
            self._close_refused(t)
            return
        if not end.clean and self.received_any and not self.tunnel_ended:
            # The client has part of an answer and the rest will never come (the backend failed, E_BUFFER,
            # the tunnel closed): a reset tells it the answer is incomplete.
            reset(t)
        elif end.origin == "tunnel" and not self.tunnel_ended:
            t.abort()  # the tunnel is gone before any answer: free the client now
        else:
            t.close()  # flushes what is queued for the client, then closes
            asyncio.get_running_loop().call_later(CLOSE_GRACE, self._cut)
        self._finish_attempt()

    def _close_refused(self, t: asyncio.Transport) -> None:
        """After a refusal mid-routing (the answer, if any, is written): close without losing it."""
        if self.client_ended:
            t.close()  # everything it sent is read: a plain close loses nothing
        else:  # it may still be sending: a close now would reset the connection and lose the answer
            self.set_reading(True)
            self._linger(t)
            self.front.pending.add(id(self), self._shed)  # bounded with the other unrouted sockets

    def _cut(self) -> None:
        t = self.transport
        if t is not None and t.get_write_buffer_size():
            reset(t)  # what it read is truncated: a FIN would make it look whole

    def _finish_attempt(self) -> None:
        # Soon, not now: this runs inside the multiplexer's dispatch or its close.
        if not self._attempt_over and self.stream is not None:
            self._attempt_over = True
            asyncio.get_running_loop().call_soon(self._attempt_done)

    def _attempt_done(self) -> None:
        stream, t = self.stream, self.transport
        assert stream is not None and t is not None
        result = "error"
        try:
            self.bytes_in += stream.bytes_out
            self.bytes_out += stream.bytes_in
            self._folded = True
            tunnel = self.tunnel
            if self.retry and not t.is_closing() and tunnel is not None:
                # The sidecar refused before saying anything: try another tunnel with the same bytes.
                self.tried.add(id(tunnel))
                end = self.end
                code = end.code if end is not None and end.origin == "peer" else "tunnel closed"
                self.router.refused(self, tunnel, code)
                try:
                    self._attach(self.router.open(self))
                    return
                except Refused as exc:
                    # Nothing reached the client yet: it can still be told in its own protocol.
                    t.write(refusal_bytes(self.kind, exc.reason, str(exc), tls_alert=self.front.tls_alert))
                    self._close_refused(t)
                    self.router.rejected(self.kind, exc.reason)
                    result = "rejected"
            elif self.end is not None and self.end.clean:
                result = "ok"
            elif self.end is not None and self.end.origin == "tunnel":
                result = "tunnel_closed"
        except Exception:  # a bug must cost this one client only
            log.exception("internal error while finishing a client")
            t.abort()
        self._phase = _DONE
        self.router.done(self, result)
        self._release()

    def abort(self) -> None:
        """Drop the socket now (the edge is closing and this client's tunnel is gone)."""
        if self.transport is not None and not self._lost:
            self.transport.abort()

    # -- accounting ---------------------------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """Bytes (client -> tunnel, tunnel -> client) over every attempt so far."""
        stream = self.stream
        if stream is None or self._folded:
            return self.bytes_in, self.bytes_out
        return self.bytes_in + stream.bytes_out, self.bytes_out + stream.bytes_in

    def uncounted(self) -> tuple[int, int]:
        """Bytes not yet in the counter, marked counted."""
        total_in, total_out = self.totals()
        delta = (max(0, total_in - self._counted_in), max(0, total_out - self._counted_out))
        self._counted_in = max(total_in, self._counted_in)
        self._counted_out = max(total_out, self._counted_out)
        return delta
