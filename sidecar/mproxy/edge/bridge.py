"""One public client socket joined to one tunnel stream, with flow control both ways.

Client -> tunnel: `pump()` reads the socket only while the stream accepts data (the multiplexer calls
`pause_writing` when the stream's queue is full or the sidecar sent `pause` for this client).
Tunnel -> client: data goes straight to the socket's transport; when more than `high_water` bytes wait
for a slow client we send `pause` for this client only, and `resume` once the socket drained. A slow
client therefore never stalls the tunnel or any other client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mproxy.tunnel.mux import Stream, StreamHandler

log = logging.getLogger("mproxy.edge")

READ_CHUNK = 64 * 1024
CLOSE_GRACE = 30.0  # a closed stream's client gets this long to take its last bytes, then is cut off
REPLAY_MAX = 256 * 1024  # client bytes kept until the sidecar first answers, to retry elsewhere
RETRY_CODES = frozenset({"E_SHUTTING_DOWN", "E_LIMIT"})
# A tunnel closing with 1001 (a sidecar going away after its drain) may never have read a `connection`
# the edge sent just before the close; such a stream, opened this recently and never answered, cannot
# have reached a backend (a drain waits for streams it accepted), so it is replayed elsewhere too.
FRESH_SECONDS = 1.0


class ClientBridge(StreamHandler):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, high_water: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        self.high_water = high_water
        self.stream: Stream | None = None
        self.can_send = asyncio.Event()
        self.can_send.set()
        self.done = asyncio.Event()
        self.close_reason: str | None = None
        self.peer_error: tuple[str, str] | None = None
        self.received_any = False
        self._drain_task: asyncio.Task[None] | None = None
        # What the client sent, until the sidecar answers: a refused stream can be replayed elsewhere.
        self.sent: bytearray | None = bytearray()
        self.retry = False

    # -- StreamHandler: called by the multiplexer ------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self.received_any:
            self.received_any = True
            self.sent = None  # the sidecar answered: this client can no longer move elsewhere
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(data)
        if self._drain_task is None and transport.get_write_buffer_size() > self.high_water:
            if self.stream is not None:
                self.stream.pause_reading()
            self._drain_task = asyncio.ensure_future(self._wait_drain())

    async def _wait_drain(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.writer.drain()
        self._drain_task = None
        if self.stream is not None and not self.stream.closed:
            self.stream.resume_reading()

    def eof_received(self) -> None:
        if not self.transport.is_closing() and self.transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.write_eof()

    def error_received(self, message: str, code: str) -> None:
        self.peer_error = (message, code)

    def pause_writing(self) -> None:
        self.can_send.clear()

    def resume_writing(self) -> None:
        self.can_send.set()

    def stream_closed(self, reason: str | None) -> None:
        self.close_reason = reason
        self.done.set()
        self.can_send.set()
        if self._can_retry(reason):
            self.retry = True  # leave the client open: the relay replays it onto another tunnel
            return
        if reason is not None and reason.startswith("tunnel closed"):
            self.transport.abort()  # the tunnel is gone: nothing more will come, free the client now
        else:
            self.transport.close()  # flushes what is queued for the client, then closes
            asyncio.get_running_loop().call_later(CLOSE_GRACE, self._cut)

    def _can_retry(self, reason: str | None) -> bool:
        if self.sent is None or self.received_any or self.stream is None:
            return False
        if self.peer_error is not None:
            return self.peer_error[1] in RETRY_CODES
        if reason is not None and reason.startswith("tunnel closed") and "(1001" in reason:
            return self.stream.mux.now() - self.stream.opened_at < FRESH_SECONDS
        return False

    def _cut(self) -> None:
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            self.transport.abort()

    # -- the client side ---------------------------------------------------------------------------

    async def pump(self, initial: bytes) -> None:
        """Client bytes into the stream until the client's EOF; then wait for the stream to close."""
        stream = self.stream
        assert stream is not None
        if initial:
            self._record(initial)
            stream.write(initial)
        read = self.reader.read
        done = asyncio.ensure_future(self.done.wait())
        try:
            try:
                while not stream.closed:
                    if not self.can_send.is_set():
                        await self.can_send.wait()
                        continue
                    reading = asyncio.ensure_future(read(READ_CHUNK))
                    await asyncio.wait((reading, done), return_when=asyncio.FIRST_COMPLETED)
                    if not reading.done():
                        reading.cancel()  # the stream closed; unread client bytes stay in the reader
                        with contextlib.suppress(asyncio.CancelledError):
                            await reading
                        break
                    data = reading.result()
                    if not data:
                        stream.write_eof()
                        break
                    self._record(data)
                    stream.write(data)
            except (ConnectionError, OSError) as exc:
                if not stream.closed:
                    stream.abort(f"client connection failed: {type(exc).__name__}", "E_CLIENT")
            await done
        finally:
            done.cancel()
            if self._drain_task is not None:
                self._drain_task.cancel()

    def _record(self, data: bytes) -> None:
        sent = self.sent
        if sent is not None:
            if len(sent) + len(data) > REPLAY_MAX:
                self.sent = None
            else:
                sent += data
