"""Run a Multiplexer over an aiohttp WebSocket (client or server side): reader, writer, keepalive.

`await run_tunnel(ws, mux, heartbeat=Heartbeat(10, 30), stop=event)` returns a `TunnelClose` saying why the
tunnel ended: the peer closed it, the peer sent malformed M-PROXY (1002, reason = the codec's message), the
peer provoked more urgent frames than the multiplexer's budget without reading them (overflow, 1008), the
peer went silent past the dead-peer timeout, the transport failed, a bug raised in one of the pumps
(internal_error, 1011: logged here once, without a traceback unless at debug level), or `stop` was set
(1001 going away). Whatever happens, even cancellation, the mux and the WebSocket are closed when it
returns; a WebSocket whose close handshake does not finish in CLOSE_TIMEOUT (a peer that does not read) has
its transport aborted. The WebSocket must be opened with `autoping=False` (we answer pings ourselves and
track every received message as a sign of life) and without aiohttp's own heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from mproxy.tunnel.mux import Multiplexer, TunnelOverflow, TunnelProtocolError
from mproxy.tunnel.wsframe import frame_sender

__all__ = [
    "CLOSE_GOING_AWAY", "CLOSE_PROTOCOL_ERROR", "Heartbeat", "TunnelClose", "WebSocketLike", "run_tunnel",
]

log = logging.getLogger("mproxy.tunnel")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TIMEOUT = 2.0  # seconds for our close frame and the peer's answer; then the transport is aborted
CLOSE_TIMEOUT_NOT_READING = 0.25  # ... when the peer is known not to read (overflow)
TRANSPORT_ERRORS = (ConnectionError, aiohttp.ClientError, RuntimeError, OSError)


class WebSocketLike(Protocol):
    """What run_tunnel needs; aiohttp's ClientWebSocketResponse and web.WebSocketResponse both fit."""

    @property
    def closed(self) -> bool: ...

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None: ...

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...  # noqa: ASYNC109

    async def ping(self, message: bytes = b"") -> None: ...

    async def pong(self, message: bytes = b"") -> None: ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...


@dataclass(frozen=True, slots=True)
class Heartbeat:
    interval: float = 10.0  # ping after this much silence from the peer
    timeout: float = 30.0  # declare the peer dead after this much silence


@dataclass(frozen=True, slots=True)
class TunnelClose:
    # short machine-friendly: peer_closed, protocol_error, overflow, dead_peer, transport_error,
    # internal_error, shutdown, closed
    reason: str
    detail: str  # human sentence
    code: int | None = None  # WebSocket close code (sent or received)

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


async def run_tunnel(
    ws: WebSocketLike,
    mux: Multiplexer,
    *,
    heartbeat: Heartbeat | None = None,
    stop: asyncio.Event | None = None,
) -> TunnelClose:
    """Pump `ws` <-> `mux` until the tunnel ends; always closes `mux` and `ws` before returning."""
    hb = heartbeat or Heartbeat()
    loop = asyncio.get_running_loop()
    state = {"last_seen": loop.time()}

    async def reader() -> TunnelClose:
        feed = mux.feed
        receive = ws.receive
        binary = aiohttp.WSMsgType.BINARY
        while True:
            msg = await receive()
            state["last_seen"] = loop.time()
            kind = msg.type
            if kind is binary:
                try:
                    feed(msg.data)
                except TunnelOverflow as exc:
                    return TunnelClose("overflow", str(exc), CLOSE_POLICY)
                except TunnelProtocolError as exc:
                    return TunnelClose("protocol_error", str(exc), CLOSE_PROTOCOL_ERROR)
            elif kind is aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif kind is aiohttp.WSMsgType.PONG:
                pass
            elif kind is aiohttp.WSMsgType.TEXT:
                # The telebit client drops text messages too; not worth killing the tunnel.
                log.warning("ignored a text WebSocket message (%d chars)", len(msg.data),
                            extra={"tunnel": mux.name})
            elif kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                code = msg.data if isinstance(msg.data, int) else getattr(ws, "close_code", None)
                extra = msg.extra if isinstance(msg.extra, str) else ""
                return TunnelClose("peer_closed", f"the peer closed the WebSocket ({code} {extra})".strip(),
                                   code)
            elif kind is aiohttp.WSMsgType.ERROR:
                return TunnelClose("transport_error", f"WebSocket error: {msg.data!r}")

    async def writer() -> TunnelClose:
        try:
            await mux.run_writer(frame_sender(ws))
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            return TunnelClose("transport_error", f"sending failed: {type(exc).__name__}: {exc}")
        return TunnelClose("closed", mux.close_reason or "the multiplexer closed")

    async def keepalive() -> TunnelClose:
        pinged_at = 0.0
        sweep_every = min(max(mux.limits.idle_timeout / 4, 0.05), 5.0)
        next_sweep = loop.time() + sweep_every
        tick = max(min(hb.interval, hb.timeout - hb.interval, sweep_every) / 2, 0.01)
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            silence = now - state["last_seen"]
            if silence >= hb.timeout:
                return TunnelClose("dead_peer", f"no data or pong from the peer for {silence:.1f} s "
                                                f"(timeout {hb.timeout:g} s)")
            # <=, not <: uvloop's clock ticks in milliseconds, so a pong can carry our ping's timestamp
            if silence >= hb.interval and pinged_at <= state["last_seen"]:
                pinged_at = now
                # In its own task: aiohttp may wait for the transport to drain, and a peer that stopped
                # reading must not stall the dead-peer check or the idle sweep. Never cancelled before
                # the end: a cancelled drain would cancel aiohttp's shared drain waiter (see _close_ws).
                if not pings or pings[-1].done():
                    pings[:] = [asyncio.ensure_future(ws.ping())]
            if now >= next_sweep:
                next_sweep = now + sweep_every
                mux.sweep_idle()

    async def stopper() -> TunnelClose:
        assert stop is not None
        await stop.wait()
        return TunnelClose("shutdown", "going away", CLOSE_GOING_AWAY)

    async def overflow() -> TunnelClose:
        return TunnelClose("overflow", await mux.wait_failed(), CLOSE_POLICY)

    pings: list[asyncio.Future[None]] = []
    tasks = [asyncio.ensure_future(c) for c in (reader(), writer(), keepalive(), overflow())]
    if stop is not None:
        tasks.append(asyncio.ensure_future(stopper()))
    result = TunnelClose("internal_error", "the tunnel runner was cancelled", CLOSE_GOING_AWAY)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        result = _outcome(next(iter(done)), mux.name)
    finally:
        every: list[asyncio.Future[Any]] = [*tasks, *pings]
        for t in every:
            t.cancel()
        for t in every:
            with contextlib.suppress(BaseException):
                await t
        mux.close(str(result), code=result.reason, close_code=result.code)
        await _close_ws(ws, result)
    return result


def _outcome(task: asyncio.Future[TunnelClose], name: str) -> TunnelClose:
    """The TunnelClose a finished pump returned, or one for the exception it raised."""
    if task.cancelled():  # not by us: e.g. a drain waiter aiohttp shares, cancelled by someone else
        return TunnelClose("transport_error", "a tunnel task was cancelled while sending")
    exc = task.exception()
    if exc is None:
        return task.result()
    if isinstance(exc, TRANSPORT_ERRORS):
        return TunnelClose("transport_error", f"{type(exc).__name__}: {exc}")
    # A bug, or input we did not guard against: this tunnel ends, nothing else does.
    detail = f"{type(exc).__name__}: {exc}"[:300]
    log.error("tunnel failed on an internal error, closing it: %s", detail, extra={"tunnel": name})
    log.debug("internal error in the tunnel runner", exc_info=exc, extra={"tunnel": name})
    return TunnelClose("internal_error", detail, CLOSE_INTERNAL_ERROR)


async def _close_ws(ws: WebSocketLike, result: TunnelClose) -> None:
    if ws.closed:
        return
    code = CLOSE_NORMAL
    if result.reason in ("protocol_error", "shutdown", "overflow", "internal_error") and result.code:
        code = result.code
    elif result.reason == "dead_peer":
        code = CLOSE_GOING_AWAY
    finished = False
    try:
        # Close frames must fit in one write (ws 5.2 drops split ones): keep the reason short.
        timeout = CLOSE_TIMEOUT_NOT_READING if result.reason == "overflow" else CLOSE_TIMEOUT
        await asyncio.wait_for(ws.close(code=code, message=result.detail.encode()[:120]), timeout)
        finished = True
    except (TimeoutError, *TRANSPORT_ERRORS):
        pass
    except asyncio.CancelledError:
        # aiohttp shares one drain future between all writers of a connection: our writer, cancelled
        # while the peer did not read, cancelled it, and the close frame's write then raises this. Only a
        # cancellation of our own task is real (before this, a dead peer's tunnel ended in silence here).
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    finally:
        # A peer that does not read (or answer our close) must not keep the connection: drop it. After an
        # overflow or a dead peer, even a close that "finished" may have left the transport closing with
        # our unsent bytes, waiting for a flush that never comes (asyncio), so drop those always.
        transport = getattr(getattr(ws, "_writer", None), "transport", None)
        not_reading = result.reason in ("overflow", "dead_peer")
        if transport is not None and (not_reading or (not finished and not transport.is_closing())):
            transport.abort()
