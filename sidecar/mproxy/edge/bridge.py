"""One public client socket joined to one tunnel stream, with flow control both ways.

Once a client is routed, the bridge takes its transport over from the listener's StreamReader (the
bytes already buffered there come along) and works at the protocol level: no task, no copy per chunk.

- Client -> tunnel: `data_received` goes straight into `stream.write()`. When the multiplexer says the
  stream's queue is full, or the sidecar sent `pause` for this client, the client's socket stops being
  read (`transport.pause_reading()`) until `resume_writing`.
- Tunnel -> client: data goes straight to the transport. When more than `high_water` bytes wait for a
  slow client, the transport calls `pause_writing` and the sidecar is sent `pause` for this one client;
  `resume` follows when the socket drained. A slow client never stalls the tunnel or another client.
- Buffer limits (mproxy.buffers): bytes queued for a client that the sidecar keeps sending while paused
  (or a hostile tunnel that ignores `pause`) are bounded per stream and per tunnel; past them the stream
  is cut with E_BUFFER and the client reset.
- A client that resets or closes while its reads are paused is noticed within a second
  (mproxy.sockwatch), not at the idle timeout.
- A stream that fails after the client got data and before the sidecar's `end` (backend error, E_BUFFER,
  the tunnel closed) ends with a TCP reset, so the client cannot mistake a truncated answer for a whole
  one. After `end` the answer is whole: what is queued is flushed, then a FIN.
- Replay: until the sidecar answers anything, the client's bytes are kept (up to REPLAY_MAX) so that a
  stream the sidecar refuses without having dialled a backend (E_SHUTTING_DOWN, E_LIMIT) can be moved to
  another tunnel by the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from mproxy.buffers import BufferRule, TunnelBuffers, buffers_of
from mproxy.codec.errors import ErrorCode
from mproxy.edge.listener import refusal_bytes
from mproxy.sockwatch import PausedWatch, reset
from mproxy.tunnel.mux import Stream, StreamHandler

log = logging.getLogger("mproxy.edge")

CLOSE_GRACE = 30.0  # a closed stream's client gets this long to take its last bytes, then is reset
REPLAY_MAX = 256 * 1024  # client bytes kept until the sidecar first answers, to retry elsewhere
RETRY_CODES = frozenset({ErrorCode.SHUTTING_DOWN, ErrorCode.LIMIT})
# A tunnel closing with 1001 (a sidecar going away after its drain) may never have read a `connection`
# the edge sent just before the close; such a stream, opened this recently and never answered, cannot
# have reached a backend (a drain waits for streams it accepted), so it is replayed elsewhere too.
FRESH_SECONDS = 1.0


def take_over(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Bytes a StreamReader buffered but nobody read yet, and whether it saw EOF; empties it.

    StreamReader has no public "give me what you have without waiting"; its buffer is a plain bytearray
    that CPython has kept as `_buffer` since asyncio began."""
    buf: bytearray = getattr(reader, "_buffer", bytearray())
    data = bytes(buf)
    buf.clear()
    return data, bool(getattr(reader, "_eof", False))


class _ClientSide(asyncio.Protocol):
    """The client socket's protocol once routed."""

    def __init__(self, bridge: ClientBridge) -> None:
        self.b = bridge

    def data_received(self, data: bytes) -> None:
        self.b.from_client(data)

    def eof_received(self) -> bool:
        self.b.client_eof()
        return True  # keep the socket half-open: the answer may still be on its way

    def pause_writing(self) -> None:
        self.b.client_slow(True)

    def resume_writing(self) -> None:
        self.b.client_slow(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.b.client_gone(exc)


class _TunnelSide(StreamHandler):
    """The stream's handler: what the multiplexer calls."""

    def __init__(self, bridge: ClientBridge) -> None:
        self.b = bridge

    def data_received(self, data: bytes) -> None:
        self.b.to_client(data)

    def eof_received(self) -> None:
        self.b.tunnel_ended = True
        t = self.b.transport
        if not t.is_closing() and t.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                t.write_eof()

    def error_received(self, message: str, code: str) -> None:
        self.b.peer_error = (message, code)

    def pause_writing(self) -> None:
        self.b.set_reading(False)

    def resume_writing(self) -> None:
        self.b.set_reading(True)

    def stream_closed(self, reason: str | None) -> None:
        self.b.stream_closed(reason)


class ClientBridge:
    def __init__(self, transport: asyncio.Transport, *, high_water: int, kind: str = "tcp",
                 rule: BufferRule | None = None, on_cut: Callable[[str], None] | None = None) -> None:
        self.transport = transport
        self.rule = rule or BufferRule()
        self.on_cut = on_cut  # told which buffer limit cut this stream (mproxy.buffers.CUT_LIMITS)
        self.buffers: TunnelBuffers | None = None  # the tunnel's ledger, once attached
        self.kind = kind  # the listener kind: how to tell the client its backend failed
        self.high_water = high_water
        self.stream: Stream | None = None
        self.client = _ClientSide(self)
        self.handler = _TunnelSide(self)
        self.done = asyncio.get_running_loop().create_future()
        self.close_reason: str | None = None
        self.peer_error: tuple[str, str] | None = None
        self.received_any = False
        self.client_ended = False
        self.tunnel_ended = False  # the sidecar sent `end`: the client's answer is complete
        self.sent: bytearray | None = bytearray()  # replay buffer, None once the sidecar answered
        self.retry = False
        self._want_read = True
        self._peer_fin = False  # the client sent FIN while paused: read on until its EOF
        self.watch = PausedWatch(transport, on_reset=self._client_reset, on_fin=self._client_fin)

    def attach(self, stream: Stream, initial: bytes, eof: bool) -> None:
        """Start relaying: the first bytes (and a client EOF already seen) go first."""
        self.stream = stream
        self.buffers = buffers_of(stream.mux, self.rule)
        t = self.transport
        if t.is_closing():  # the client left while we were choosing a tunnel
            stream.abort("client connection lost before it was relayed", ErrorCode.CLIENT)
            self._finish()
            return
        t.set_write_buffer_limits(high=self.high_water, low=max(self.high_water // 4, 1))
        t.set_protocol(self.client)
        if initial:
            self.from_client(initial)
        if eof:
            self.client_eof()
        self.set_reading(not stream.writing_paused)

    async def wait(self) -> None:
        await asyncio.shield(self.done)

    # -- client -> tunnel --------------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        sent = self.sent
        if sent is not None:
            if len(sent) + len(data) > REPLAY_MAX:
                self.sent = None
            else:
                sent += data
        stream = self.stream
        if stream is not None and not stream.closed:
            stream.write(data)

    def client_eof(self) -> None:
        self.client_ended = True
        stream = self.stream
        if stream is not None and not stream.closed:
            stream.write_eof()

    def client_gone(self, exc: Exception | None) -> None:
        self.watch.stop()
        stream = self.stream
        if stream is not None and not stream.closed:
            if exc is not None or not self.client_ended:
                reason = type(exc).__name__ if exc else "closed without EOF"
                stream.abort(f"client connection lost ({reason})", ErrorCode.CLIENT)
            else:
                stream.close()  # our `end` is queued; stop waiting for the sidecar's
        self._finish()

    def set_reading(self, on: bool) -> None:
        self._want_read = on
        t = self.transport
        if t.is_closing():
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
        if on:
            self.watch.stop()
        else:
            self.watch.start()

    def _client_reset(self) -> None:
        stream = self.stream
        log.info("client %s reset its connection while paused; ending its stream",
                 stream.client_id if stream else "?")
        if stream is not None and not stream.closed:
            stream.abort("client connection reset while paused", ErrorCode.CLIENT)
        self.transport.abort()
        self._finish()

    def _client_fin(self) -> None:
        # The client can send no more: what is left in the kernel buffer is bounded, and reading it
        # delivers its EOF in order, as for a client that was never paused.
        self._peer_fin = True
        self.set_reading(True)

    # -- tunnel -> client --------------------------------------------------------------------------

    def to_client(self, data: bytes) -> None:
        if not self.received_any:
            self.received_any = True
            self.sent = None  # the sidecar answered: this client can no longer move elsewhere
        t = self.transport
        if not t.is_closing():
            t.write(data)
            if self.buffers is not None:
                self.buffers.update(self, t.get_write_buffer_size())

    # -- mproxy.buffers.Holder ---------------------------------------------------------------------

    def buffered_bytes(self) -> int:
        t = self.transport
        return 0 if t.is_closing() else t.get_write_buffer_size()

    def overflow(self, reason: str, limit: str) -> None:
        if self.on_cut is not None:
            self.on_cut(limit)
        stream = self.stream
        log.warning("client %s: the tunnel kept sending while paused (%s); cutting the stream",
                    stream.client_id if stream else "?", reason)
        if stream is not None and not stream.closed:
            stream.abort(f"the tunnel kept sending while paused: {reason}", ErrorCode.BUFFER)
        else:
            reset(self.transport)

    def client_slow(self, slow: bool) -> None:
        stream = self.stream
        if stream is None or stream.closed:
            return
        if slow:
            stream.pause_reading()
            if self.buffers is not None:
                self.buffers.paused(self)
        else:
            stream.resume_reading()
            if self.buffers is not None:
                self.buffers.resumed(self)

    # -- end ---------------------------------------------------------------------------------------

    def _can_retry(self, reason: str | None) -> bool:
        if self.sent is None or self.received_any or self.stream is None:
            return False
        if self.peer_error is not None:
            return self.peer_error[1] in RETRY_CODES
        if reason is not None and reason.startswith("tunnel closed") and "(1001" in reason:
            return self.stream.mux.now() - self.stream.opened_at < FRESH_SECONDS
        return False

    def stream_closed(self, reason: str | None) -> None:
        self.close_reason = reason
        self.watch.stop()
        if self.buffers is not None:
            self.buffers.forget(self)
        if not self.transport.is_closing() and self._can_retry(reason):
            self.retry = True  # leave the client open: the relay replays it onto another tunnel
            self._finish()
            return
        if self.peer_error is not None and not self.received_any and not self.transport.is_closing():
            # Nothing reached the client yet, so it can still get a proper answer in its protocol.
            # Only the error code goes out: the sidecar's message may name internal hosts.
            code = self.peer_error[1][:40]
            self.transport.write(refusal_bytes(
                self.kind, "backend_failed", f"the service behind this name is unavailable ({code})"))
        if reason is not None and self.received_any and not self.tunnel_ended:
            # The client has part of an answer and the rest will never come (the backend failed, E_BUFFER,
            # the tunnel closed): a reset tells it the answer is incomplete.
            reset(self.transport)
        elif reason is not None and reason.startswith("tunnel closed") and not self.tunnel_ended:
            self.transport.abort()  # the tunnel is gone before any answer: free the client now
        else:
            self.transport.close()  # flushes what is queued for the client, then closes
            asyncio.get_running_loop().call_later(CLOSE_GRACE, self._cut)
        self._finish()

    def _cut(self) -> None:
        if self.transport.get_write_buffer_size():
            reset(self.transport)  # what it read is truncated: a FIN would make it look whole

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def status(self) -> dict[str, Any]:
        return {"received": self.received_any, "retry": self.retry, "reason": self.close_reason}
