"""Two sockets piped both ways, Protocol to Protocol: a client forwarded to a peer edge (mproxy.edge.forward).

    splice = Splice(client_transport, upstream_transport, high_water=..., idle=..., on_done=...)

Each transport gets an `_End` as its protocol; bytes read on one are written to the other at once (no task,
no queue of our own). Bounds: when one side's write buffer passes `high_water` the other side stops being
read until it drains; one idle timeout for the pair. A FIN is passed on as a FIN (half-close), and once both
sides sent theirs both are closed; a reset (or the idle cut) is passed on as a reset, so neither end can
take a cut stream for a whole one. `on_done(result)` runs once: "ok" (both ended) or "reset".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from mproxy.sockwatch import reset

__all__ = ["Splice"]

log = logging.getLogger("mproxy.edge.peers")

IDLE_CHECK_MAX = 5.0  # the idle timer re-arms at most this far ahead


class _End(asyncio.Protocol):
    """One side's protocol: what it reads goes to the other side."""

    def __init__(self, splice: Splice, transport: asyncio.Transport) -> None:
        self.splice = splice
        self.transport = transport
        self.other: _End = self
        self.eof = False  # this side sent FIN

    def data_received(self, data: bytes) -> None:
        self.splice.last = self.splice.loop.time()
        t = self.other.transport
        if not t.is_closing():
            t.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        t = self.other.transport
        if self.other.eof:
            self.splice.finish("ok")
        elif not t.is_closing() and t.can_write_eof():
            try:
                t.write_eof()
            except (OSError, RuntimeError):
                self.splice.finish("reset")
        return True  # half-open: the other side may still answer

    def pause_writing(self) -> None:  # this side's write buffer passed high_water: stop reading the other
        self.splice.set_reading(self.other.transport, False)

    def resume_writing(self) -> None:
        self.splice.set_reading(self.other.transport, True)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None or not self.eof:
            log.debug("forwarded connection ended: %s", exc or "closed without EOF")
            self.splice.finish("reset" if exc is not None else "closed")
        else:
            self.splice.finish("ok")


class Splice:
    def __init__(self, a: asyncio.Transport, b: asyncio.Transport, *, high_water: int, idle: float,
                 on_done: Callable[[str], None], a_first: bytes = b"", b_first: bytes = b"",
                 a_ended: bool = False) -> None:
        """Pipe `a` <-> `b` from now on. Already read: `a_first` from `b`, written to `a` first, and
        `b_first` from `a`; `a_ended`: `a` sent its FIN already (passed on to `b`)."""
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.idle = idle
        self._on_done: Callable[[str], None] | None = on_done
        self.a, self.b = _End(self, a), _End(self, b)
        self.a.other, self.b.other = self.b, self.a
        for end in (self.a, self.b):
            end.transport.set_write_buffer_limits(high=high_water, low=max(high_water // 4, 1))
            end.transport.set_protocol(end)
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(min(idle, IDLE_CHECK_MAX), self._check)
        if a_first:
            a.write(a_first)
        if b_first:
            b.write(b_first)
        if a_ended:
            self.a.eof = True
            if b.can_write_eof():
                b.write_eof()
        for end in (self.a, self.b):
            self.set_reading(end.transport, True)

    @property
    def done(self) -> bool:
        return self._on_done is None

    def set_reading(self, t: asyncio.Transport, on: bool) -> None:
        if t.is_closing():
            return
        with contextlib.suppress(AttributeError, RuntimeError):
            if on and not t.is_reading():
                t.resume_reading()
            elif not on and t.is_reading():
                t.pause_reading()

    def _check(self) -> None:
        left = self.last + self.idle - self.loop.time()
        if left <= 0:
            log.debug("forwarded connection idle for %.0f s; cutting it", self.idle)
            self.finish("idle")
            return
        self._timer = self.loop.call_later(min(left, IDLE_CHECK_MAX), self._check)

    def finish(self, how: str) -> None:
        """End the pair: "ok" closes both (queued bytes are flushed first); anything else resets both."""
        on_done = self._on_done
        if on_done is None:
            return
        self._on_done = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        clean = how in ("ok", "closed")
        for end in (self.a, self.b):
            if clean:
                end.transport.close()  # flushes what is queued first
            else:
                reset(end.transport)  # a reset, not a FIN: the other end must not take a cut stream for whole
        on_done("ok" if clean else "reset")

    def abort(self) -> None:
        """The edge is closing: reset both sides now."""
        self.finish("reset")
