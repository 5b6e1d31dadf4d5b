"""The stream multiplexer: many client streams over one M-PROXY tunnel, role-neutral.

A `Multiplexer` owns one tunnel's byte stream in both directions. Bytes from the peer go in through
`feed()` (sync: parse, dispatch to streams); bytes for the peer come out of `run_writer(send)`, a task that
packs queued stream data into frames, round robin across streams, and hands batches to `send` (e.g. a
WebSocket's send_bytes). `mproxy.tunnel.ws.run_tunnel` wires both to an aiohttp WebSocket.

Each client stream is a `Stream`, which behaves like an asyncio transport for its `StreamHandler` (which
behaves like an asyncio protocol): the handler gets `data_received`, `eof_received`, `error_received`,
`pause_writing`/`resume_writing` and `stream_closed(end)` (`end`, a `StreamEnd`, says how it ended); it
calls `stream.write()`, `write_eof()`, `abort(message, code)`, `pause_reading()`/`resume_reading()`.

How a role uses it:
- Edge (opens streams): `stream = mux.open_stream(addr, handler, service="https", serviceport=443,
  name="example.com")` sends the `connection` frame; then `stream.write(first_bytes)` and so on.
  `mux.can_open(addr.address)` says whether the limits allow one more stream.
- Sidecar (accepts streams): `Multiplexer(on_stream=accept)`; `accept(stream)` is called on a `connection`
  frame (or, with `implicit_open=True`, on data for an unknown client, as old relays send it) and returns the
  stream's handler. Limits (streams per tunnel, per client address: IPv6 per /64 network, `ipv6_prefix`)
  are enforced before `accept` is called: the client gets an `error` frame, the tunnel carries on. During
  shutdown `mux.draining = True` refuses new streams the same way (code E_SHUTTING_DOWN) so the relay can
  try another replica.
- Flow control, both ways, per stream:
  * outbound: `stream.write()` never blocks; when the stream's queued bytes pass `high_water` (or the peer
    sent `pause` for this client) the handler's `pause_writing()` is called: stop reading your socket.
    `resume_writing()` follows when the queue drains below `low_water` and the peer has not paused us.
  * inbound: when the handler's sink is full, it calls `stream.pause_reading()` (sends `pause` to the
    peer) and `stream.resume_reading()` later (sends `resume`).
- Fairness: the writer takes at most `frame_size` bytes from a stream per turn, round robin, and bounds
  each batch to `batch_size`, so a bulk stream cannot starve an interactive one. Control, connection,
  pause/resume and error frames go first.
- Half-close: `write_eof()` sends `end` after the queued data; the peer's `end` arrives as
  `eof_received()`. A stream is closed (and `stream_closed()` called once) when both sides sent `end`, on
  any `error` either way, on `abort()`, on the idle timeout, or when the tunnel closes.
- Control channel: `mux.send_control(value)`; incoming control values go to `on_control(value)`.
- Urgent frames (control, connection, error, pause/resume) are bounded by `max_pending_replies` frames and
  `max_urgent_bytes` bytes not yet sent. Going past either (a peer provoking replies and not reading them)
  drops the frame and fails the tunnel: `mux.failure` says why, `feed()` raises `TunnelOverflow` (a
  `TunnelProtocolError`) if it happened there, and `await mux.wait_failed()` returns, so the runner closes
  the tunnel with 1008 wherever it happened. A reply the codec cannot pack (a peer's client id so long
  that our header would pass 255 bytes) is dropped and counted in `replies_dropped`; a stream whose frames
  could not be packed is never opened.
- Closing the tunnel: `mux.close(reason)` closes every stream (handlers see a `StreamEnd` of origin
  "tunnel");
  malformed input makes `feed()` raise `TunnelProtocolError` (the runner then closes the tunnel, 1002).

Not thread-safe: use from the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mproxy.codec import (
    Address,
    Connection,
    Control,
    End,
    Error,
    Event,
    LocalProtocolError,
    Message,
    Parser,
    Pause,
    RemoteProtocolError,
    Resume,
    address_key,
    header_room,
    pack_checked_header,
    pack_connection,
    pack_control,
    pack_error,
    pack_pause,
    pack_resume,
)
from mproxy.codec.errors import ErrorCode
from mproxy.tunnel.end import CLEAN, StreamEnd
from mproxy.tunnel.urgent import UrgentQueue

__all__ = [
    "Multiplexer",
    "MuxLimits",
    "Stream",
    "StreamEnd",
    "StreamHandler",
    "TunnelOverflow",
    "TunnelProtocolError",
]

log = logging.getLogger("mproxy.tunnel")

class TunnelProtocolError(Exception):
    """The peer sent bytes that are not valid M-PROXY; the tunnel must be closed (reason in str())."""


class TunnelOverflow(TunnelProtocolError):
    """The peer provoked more urgent frames than the budget allows without reading them (close: 1008)."""


class StreamHandler:
    """Callbacks for one stream (like asyncio.Protocol). Override what you need; defaults do nothing."""

    def data_received(self, data: bytes) -> None:
        """Peer data for this client."""

    def eof_received(self) -> None:
        """The peer sent `end`: it will send no more data (half-close)."""

    def error_received(self, message: str, code: str) -> None:
        """The peer sent `error`; the stream is closed right after this call."""

    def pause_writing(self) -> None:
        """Stop producing data for `stream.write()` (queue full or the peer paused this client)."""

    def resume_writing(self) -> None:
        """Producing may continue."""

    def stream_closed(self, end: StreamEnd) -> None:
        """Called exactly once when the stream is gone; `end` says how (`end.clean`: both sent `end`)."""


@dataclass(frozen=True, slots=True)
class MuxLimits:
    max_streams: int = 1000  # concurrent streams in this tunnel
    max_streams_per_client: int = 100  # concurrent streams per client address (not port) ...
    ipv6_prefix: int = 64  # ... IPv6 counted per network of this prefix (codec.address_key)
    idle_timeout: float = 900.0  # seconds without data either way before a stream is closed
    max_frame_bytes: int = 1 << 20  # largest frame body accepted from the peer
    frame_size: int = 64 * 1024  # largest data frame body we send
    # Bytes packed per send() call (one WebSocket message). The peer handles a message only once all of
    # it arrived, so an interactive frame packed behind bulk waits for the whole message: 256 KiB let a
    # 200 req/s echo fall behind a bulk download (p50 0.06-0.4 s); 64 KiB keeps it at ~3 ms.
    batch_size: int = 64 * 1024
    high_water: int = 256 * 1024  # per-stream outbound queue: pause the producer above this
    low_water: int = 64 * 1024  # ... and resume it below this
    recent_closed: int = 4096  # remembered closed client ids (late frames for them are dropped)
    max_pending_replies: int = 16384  # urgent frames (replies, control, pause...) unsent; past it: flood
    max_urgent_bytes: int = 1 << 20  # ... and their bytes: ~7,000 replies, far above any honest backlog


def _is_connection(frame: bytes) -> bool:
    """Whether a packed frame is a `connection` (field 5 of its header)."""
    fields = frame[2: 2 + frame[1]].split(b",", 5)
    return len(fields) > 5 and fields[4] == b"connection"


class Stream:
    """One client stream in a tunnel (the transport side of a StreamHandler)."""

    __slots__ = (
        "_eof_sent",
        "_forget_after_eof",
        "_handler",
        "_local_full",
        "_out",
        "_out_size",
        "_paused_peer",
        "_producer_paused",
        "_queued",
        "_remote_paused",
        "_want_eof",
        "addr",
        "bytes_in",
        "bytes_out",
        "client_id",
        "closed",
        "last_active",
        "limit_key",
        "mux",
        "name",
        "opened_at",
        "peer_ended",
        "route",
        "service",
        "serviceport",
    )

    def __init__(self, mux: Multiplexer, addr: Address, service: str, serviceport: str, name: str) -> None:
        self.mux = mux
        self.addr = addr
        self.client_id = addr.client_id
        self.service = service
        self.serviceport = serviceport
        self.name = name
        self._handler: StreamHandler = StreamHandler()
        # Only while data waits: an empty deque is 624 B, as much as the rest of an idle stream.
        self._out: deque[bytes | memoryview] | None = None
        self._out_size = 0
        self._queued = False  # in the writer's round-robin queue
        self._want_eof = False
        self._eof_sent = False
        self._forget_after_eof = False
        self.peer_ended = False  # the peer sent `end`
        self.closed = False
        self._local_full = False
        self._remote_paused = False
        self._producer_paused = False
        self._paused_peer = False
        self.bytes_in = 0
        self.bytes_out = 0
        now = mux.now()
        self.opened_at = now
        self.last_active = now
        self.route = ""  # the role's route name, once it has one (a str, not a dict: ~120 B per stream)
        self.limit_key = ""  # what the per-client limit counts it under (set when registered)

    def __repr__(self) -> str:
        return f"<Stream {self.client_id} {self.service}:{self.serviceport} {self.name!r}>"

    @property
    def handler(self) -> StreamHandler:
        return self._handler

    def set_handler(self, handler: StreamHandler) -> None:
        self._handler = handler
        if self._producer_paused:
            handler.pause_writing()

    @property
    def buffered(self) -> int:
        """Bytes queued for the peer and not yet handed to the tunnel transport."""
        return self._out_size

    @property
    def writing_paused(self) -> bool:
        return self._producer_paused

    # -- the handler's side ------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue data for the peer; never blocks. Ignored after write_eof() or close."""
        if self.closed or self._want_eof or not data:
            return
        if not isinstance(data, bytes | memoryview):
            data = bytes(data)  # the caller may reuse its bytearray
        self._enqueue(data)
        if self._out_size > self.mux.limits.high_water and not self._local_full:
            self._local_full = True
            self._update_producer()

    def _enqueue(self, data: bytes | memoryview) -> None:
        """Count `data` out and queue it; this stream joins the writer's ready list if it was not on it."""
        q = self._out
        if q is None:
            q = self._out = deque()  # only while data waits (see _out)
        q.append(data)
        n = len(data)
        self._out_size += n
        self.bytes_out += n
        self.last_active = self.mux.now()
        if not self._queued:
            self._queued = True
            self.mux._ready.append(self)
            self.mux._wake()

    def write_eof(self) -> None:
        """Send `end` after the queued data (half-close)."""
        if self.closed or self._want_eof:
            return
        self._want_eof = True
        if not self._queued:
            self._queued = True
            self.mux._ready.append(self)
            self.mux._wake()

    def abort(self, message: str = "stream aborted", code: str = ErrorCode.ABORTED) -> None:
        """Drop queued data, send `error` {message, code} to the peer, close the stream."""
        if self.closed:
            return
        self.mux._urgent(pack_error(self.addr, message, code, serviceport=self.serviceport, name=self.name))
        self._close(StreamEnd(origin="local", code=code, message=message))

    def close(self) -> None:
        """Close quietly: `end` after the queued data, then forget the stream (later peer data is
        dropped) without waiting for the peer's `end`."""
        if self.closed:
            return
        self._forget_after_eof = True
        if self._eof_sent:
            self._close(CLEAN)
        else:
            self.write_eof()

    def pause_reading(self) -> None:
        """Ask the peer to stop sending this client's data (our sink is full)."""
        if not self._paused_peer and not self.closed:
            self._paused_peer = True
            self.mux.pauses_sent += 1
            self.mux._urgent(pack_pause(self.addr, self.bytes_in, serviceport=self.serviceport,
                                        name=self.name))

    def resume_reading(self) -> None:
        if self._paused_peer and not self.closed:
            self._paused_peer = False
            self.mux._urgent(pack_resume(self.addr, self.bytes_in, serviceport=self.serviceport,
                                         name=self.name))

    @property
    def reading_paused(self) -> bool:
        return self._paused_peer

    # -- internals ---------------------------------------------------------------------------------

    def _tags(self) -> dict[str, str]:
        return {"tunnel": self.mux.name, "client": self.client_id}

    def _update_producer(self) -> None:
        want = self._local_full or self._remote_paused
        if want != self._producer_paused and not self.closed:
            self._producer_paused = want
            try:
                if want:
                    self._handler.pause_writing()
                else:
                    self._handler.resume_writing()
            except Exception:
                log.exception("stream handler failed in pause/resume_writing", extra=self._tags())

    def _take(self, budget: int, out: list[bytes | memoryview]) -> int:
        """Append up to `budget` data bytes (as one frame) plus a due `end`; return bytes appended."""
        used = 0
        if self._out_size:
            n = min(budget, self._out_size)
            # Fields checked once when the stream opened (open_stream, _packable): no checks per frame.
            header = pack_checked_header(self.addr, self.service or "tcp", n, self.serviceport, self.name)
            out.append(header)
            used += len(header) + n
            left = n
            q = self._out
            assert q is not None  # _out_size > 0
            while left:
                chunk = q[0]
                size = len(chunk)
                if size <= left:
                    q.popleft()
                    out.append(chunk)
                    left -= size
                else:
                    view = chunk if type(chunk) is memoryview else memoryview(chunk)
                    out.append(view[:left])
                    q[0] = view[left:]
                    left = 0
            self._out_size -= n
            if not q:
                self._out = None
            if self._local_full and self._out_size <= self.mux.limits.low_water:
                self._local_full = False
                self._update_producer()
        if not self._out_size:
            used += self._take_end(out)
        return used

    def _take_end(self, out: list[bytes | memoryview]) -> int:
        """Append a due `end` (queue drained, write_eof() called, not sent yet); return bytes appended."""
        if not self._want_eof or self._eof_sent:
            return 0
        self._eof_sent = True
        end = pack_checked_header(self.addr, "end", 0, self.serviceport, self.name)
        out.append(end)
        if self.peer_ended or self._forget_after_eof:
            self._close(CLEAN)
        return len(end)

    def _close(self, end: StreamEnd) -> None:
        if self.closed:
            return
        self.closed = True
        self._out = None
        self._out_size = 0
        self.mux._forget(self)
        try:
            self._handler.stream_closed(end)
        except Exception:
            log.exception("stream handler failed in stream_closed", extra=self._tags())


Accept = Callable[[Stream], StreamHandler]


def _new_stream(mux: Multiplexer, addr: Address, service: str, serviceport: str, name: str) -> Stream:
    if service == "udp":  # one datagram per frame, drop when full (issue 15)
        from mproxy.tunnel.datagram import DatagramStream

        return DatagramStream(mux, addr, service, serviceport, name)
    return Stream(mux, addr, service, serviceport, name)


class Multiplexer:
    """One tunnel's streams; see the module docstring for the protocol between roles and streams."""

    def __init__(
        self,
        *,
        on_stream: Accept | None = None,
        on_control: Callable[[object], None] | None = None,
        limits: MuxLimits | None = None,
        implicit_open: bool = False,
        name: str = "tunnel",
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.limits = limits or MuxLimits()
        self.name = name
        self._on_stream = on_stream
        self._on_control = on_control
        self.implicit_open = implicit_open
        # A telebit device reads a `connection` frame only at the end of a WebSocket message; an mproxy
        # sidecar (it says so on the upgrade, mproxy.tunnel.identity.PEER_HEADER) takes it with the
        # client's first data in one message: one message, one send, one TLS record less per new client.
        self.connection_ends_message = True
        self.now = clock or asyncio.get_running_loop().time
        self._parser = Parser(max_body=self.limits.max_frame_bytes)
        self.streams: dict[str, Stream] = {}
        self._per_client: dict[str, int] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._urgent_q = UrgentQueue(self.limits.max_pending_replies, self.limits.max_urgent_bytes)
        self._ready: deque[Stream] = deque()
        self._wakeup = asyncio.Event()
        self.closed = False
        self.close_reason: str | None = None
        self.failure: str | None = None  # why the tunnel must close (urgent frames over budget)
        self._failed = asyncio.Event()
        self.draining = False
        self._idle_waiters: list[asyncio.Future[None]] = []
        # counters (read by the roles' metrics and /status)
        self.streams_opened = 0
        self.refused: dict[str, int] = {}
        self.pauses_sent = 0
        self.pauses_received = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.replies_dropped = 0  # replies that could not be packed (the peer's client id too long)

    # -- outbound ---------------------------------------------------------------------------------

    def _wake(self) -> None:
        if not self._wakeup.is_set():
            self._wakeup.set()

    def _urgent(self, frame: bytes) -> None:
        if self.closed or self.failure is not None:
            return
        q = self._urgent_q
        if not q.push(frame):
            self._fail(
                f"{len(q)} frames ({q.nbytes} bytes) owed to the peer were not sent yet (limits "
                f"{q.max_frames} frames, {q.max_bytes} bytes): the peer provokes replies and does not read "
                "them (flood)"
            )
            return
        self._wake()

    def _fail(self, reason: str) -> None:
        """The tunnel cannot go on (the runner closes it with 1008); later frames are dropped."""
        if self.failure is None:
            self.failure = reason
            self._failed.set()
            self._wake()

    async def wait_failed(self) -> str:
        """Return `failure` once the multiplexer has failed (see `_fail`)."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    def send_control(self, value: object) -> None:
        """Queue a control message (JSON-serialisable value), sent before any stream data."""
        self._urgent(pack_control(value))

    def _reply_error(self, addr: Address, message: str, code: str) -> None:
        """An error frame answering the peer's frame, within the urgent budget (see `_urgent`). One the
        codec cannot pack (the peer's address fields leave no room for ours) is dropped: the peer could
        not parse it anyway, and raising here would take the whole tunnel down."""
        try:
            frame = pack_error(addr, message, code)
        except LocalProtocolError:
            self.replies_dropped += 1
            return
        self._urgent(frame)

    def can_open(self, client_address: str) -> bool:
        lim = self.limits
        return (
            not self.closed
            and len(self.streams) < lim.max_streams
            and self._per_client.get(address_key(client_address, lim.ipv6_prefix), 0)
            < lim.max_streams_per_client
        )

    def open_stream(
        self,
        addr: Address,
        handler: StreamHandler,
        *,
        service: str,
        serviceport: str | int = "",
        name: str = "",
    ) -> Stream:
        """Edge side: send `connection` for a new client and return its stream."""
        if self.closed:
            raise ConnectionError(f"tunnel {self.name} is closed ({self.close_reason})")
        if addr.client_id in self.streams:
            raise ValueError(f"client {addr.client_id} already has a stream in this tunnel")
        # Pack first: a header the codec refuses (LocalProtocolError) must leave no stream behind.
        connection = pack_connection(addr, service=service, serviceport=serviceport, name=name)
        stream = _new_stream(self, addr, service, str(serviceport), name)
        stream._handler = handler
        self._register(stream)
        self._urgent(connection)
        return stream

    def _register(self, stream: Stream) -> None:
        self.streams[stream.client_id] = stream
        # Kept on the stream: a reload may change the prefix while it is open.
        key = stream.limit_key = address_key(stream.addr.address, self.limits.ipv6_prefix)
        self._per_client[key] = self._per_client.get(key, 0) + 1
        self._recent.pop(stream.client_id, None)
        self.streams_opened += 1

    def _forget(self, stream: Stream) -> None:
        if self.streams.pop(stream.client_id, None) is stream:
            key = stream.limit_key
            n = self._per_client.get(key, 1) - 1
            if n > 0:
                self._per_client[key] = n
            else:
                self._per_client.pop(key, None)
            self._remember_closed(stream.client_id)
        if not self.streams and self._idle_waiters:
            for fut in self._idle_waiters:
                if not fut.done():
                    fut.set_result(None)
            self._idle_waiters.clear()

    def _remember_closed(self, client_id: str) -> None:
        recent = self._recent
        recent[client_id] = None
        if len(recent) > self.limits.recent_closed:
            recent.popitem(last=False)

    def has_pending_output(self) -> bool:
        return bool(self._urgent_q or self._ready)

    def next_batch(self) -> list[bytes | memoryview]:
        """Frames for the next send: urgent frames first, then stream data round robin.

        A `connection` frame ends its batch, so it is the last frame of its WebSocket message and the new
        client's data goes in a later one: telebit's device pauses its WebSocket on `connection` but
        parses the rest of the message, and data for the client it is still connecting opens a second
        local connection (issue 11). Connection frames are urgent, so they still precede their data."""
        out: list[bytes | memoryview] = []
        size = 0
        budget = self.limits.batch_size
        urgent = self._urgent_q
        while urgent and size < budget:
            frame = urgent.popleft()
            out.append(frame)
            size += len(frame)
            if self.connection_ends_message and _is_connection(frame):
                return out
        ready = self._ready
        frame_size = self.limits.frame_size
        while ready and size < budget:
            stream = ready.popleft()
            if stream.closed:
                stream._queued = False
                continue
            size += stream._take(min(frame_size, budget - size), out)
            if not stream.closed and (stream._out_size or (stream._want_eof and not stream._eof_sent)):
                ready.append(stream)
            else:
                stream._queued = False
        return out

    async def run_writer(self, send: Callable[[bytearray], Awaitable[None]]) -> None:
        """Send batches until the tunnel closes; `send` raising ends the writer (and so the tunnel).

        Each batch is a fresh bytearray that `send` may keep or mutate (e.g. mask in place)."""
        wakeup = self._wakeup
        while not self.closed:
            if not self.has_pending_output():
                wakeup.clear()
                await wakeup.wait()
                continue
            batch = self.next_batch()
            if not batch:
                continue
            data = bytearray().join(batch)
            self.bytes_sent += len(data)
            await send(data)

    # -- inbound ----------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Process bytes from the peer. Raises TunnelProtocolError on malformed input."""
        if self.closed or self.failure is not None:
            return
        self.bytes_received += len(data)
        try:
            events = self._parser.feed(data)
        except RemoteProtocolError as exc:
            for event in getattr(exc, "events", None) or ():
                self._dispatch(event)
            raise TunnelProtocolError(f"malformed M-PROXY data from the peer at {exc}") from None
        for event in events:
            self._dispatch(event)
            if self._failed.is_set():  # over budget: the rest is not worth answering
                raise TunnelOverflow(self.failure)

    def _dispatch(self, event: Event) -> None:
        cls = type(event)
        if cls is Control:
            assert isinstance(event, Control)
            if self._on_control is not None:
                self._on_control(event.value)
            return
        client_id = event.client_id
        stream = self.streams.get(client_id)
        if cls is Message:
            if stream is None:
                if client_id in self._recent:
                    return  # late data for a stream we closed: drop it, the peer has our end/error
                if not self.implicit_open:
                    self._reply_error(event.addr, "no matching connection", ErrorCode.NO_CONN)
                    self._remember_closed(client_id)
                    return
                stream = self._accept(event, event.service, event.serviceport, event.name)
                if stream is None:
                    return
            n = len(event.data)
            stream.bytes_in += n
            stream.last_active = self.now()
            try:
                stream._handler.data_received(event.data)
            except Exception as exc:
                log.exception("stream handler failed in data_received", extra=stream._tags())
                stream.abort(f"internal error: {type(exc).__name__}", ErrorCode.INTERNAL)
            return
        if cls is Connection:
            assert isinstance(event, Connection)
            if stream is not None:
                return  # duplicate connection frame: the stream exists already
            self._accept(event, event.service, event.serviceport, event.name)
            return
        if stream is None:
            if cls in (Pause, Resume) and client_id not in self._recent:
                self._reply_error(event.addr, "no matching connection", ErrorCode.NO_CONN)
            return
        if cls is End:
            if stream.peer_ended:
                return
            stream.peer_ended = True
            stream.last_active = self.now()
            try:
                stream._handler.eof_received()
            except Exception:
                log.exception("stream handler failed in eof_received", extra=stream._tags())
            if stream._eof_sent and not stream.closed:
                stream._close(CLEAN)
        elif cls is Error:
            assert isinstance(event, Error)
            try:
                stream._handler.error_received(event.message, event.code)
            except Exception:
                log.exception("stream handler failed in error_received", extra=stream._tags())
            stream._close(StreamEnd(origin="peer", code=event.code, message=event.message))
        elif cls is Pause:
            self.pauses_received += 1
            stream._remote_paused = True
            stream._update_producer()
        elif cls is Resume:
            stream._remote_paused = False
            stream._update_producer()

    def _refuse(self, event: Event, message: str, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1
        self._reply_error(event.addr, message, code)
        self._remember_closed(event.client_id)

    def _packable(self, addr: Address, service: str, serviceport: str, name: str) -> bool:
        """Whether every frame a stream may send fits a v1 header: its longest data frame, an error with
        a long message, a pause/resume with a count (serviceport and name filled, as the reference does)."""
        # The parser checked the fields (ASCII, no commas, canonical ports): only the length is left.
        data = len(service or "tcp") + len(str(self.limits.frame_size))
        return max(data, len("error9999"), len("resume99")) <= header_room(addr, serviceport, name)

    def _accept(self, event: Event, service: str, serviceport: str, name: str) -> Stream | None:
        if not self._packable(event.addr, service, serviceport, name):
            # The peer used up the header's 255 bytes: our answers would not fit, and a stream we cannot
            # answer on would take the writer down. Drop it (no reply fits either) and its later frames.
            self.replies_dropped += 1
            self._remember_closed(event.client_id)
            return None
        if self.draining:
            self._refuse(event, "this tunnel is shutting down, retry on another", ErrorCode.SHUTTING_DOWN)
            return None
        if self._on_stream is None:
            self._refuse(event, "this peer does not accept streams", ErrorCode.NO_SERVICE)
            return None
        lim = self.limits
        if len(self.streams) >= lim.max_streams:
            self._refuse(event, f"too many streams in this tunnel (limit {lim.max_streams})", ErrorCode.LIMIT)
            return None
        if self._per_client.get(address_key(event.address, lim.ipv6_prefix), 0) >= lim.max_streams_per_client:
            self._refuse(event, f"too many streams from this client address (limit "
                                f"{lim.max_streams_per_client}; IPv6 per /{lim.ipv6_prefix})",
                         ErrorCode.LIMIT)
            return None
        stream = _new_stream(self, event.addr, service, serviceport, name)
        self._register(stream)
        try:
            stream._handler = self._on_stream(stream)
        except Exception as exc:
            log.exception("accepting a stream failed", extra=stream._tags())
            stream.abort(f"internal error: {type(exc).__name__}", ErrorCode.INTERNAL)
            return None
        return stream

    # -- lifecycle --------------------------------------------------------------------------------

    def sweep_idle(self) -> int:
        """Close streams idle longer than the idle timeout (error E_IDLE both ways); returns how many."""
        deadline = self.now() - self.limits.idle_timeout
        idle = [s for s in self.streams.values() if s.last_active < deadline]
        for stream in idle:
            stream.abort(f"idle for more than {self.limits.idle_timeout:g} s", ErrorCode.IDLE)
        return len(idle)

    async def wait_idle(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until no stream is open; True if that happened within `timeout`."""
        if not self.streams:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        return True

    def close(self, reason: str, *, code: str = "", close_code: int | None = None) -> None:
        """The tunnel is gone: close every stream. Handlers see a StreamEnd of origin "tunnel" with
        `reason` as its message, `code` (run_tunnel's close reason) and the WebSocket `close_code`."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        end = StreamEnd(origin="tunnel", code=code, close_code=close_code, message=reason)
        for stream in list(self.streams.values()):
            stream._close(end)
        self._urgent_q.clear()
        self._ready.clear()
        self._wakeup.set()
        for fut in self._idle_waiters:
            if not fut.done():
                fut.set_result(None)
        self._idle_waiters.clear()
