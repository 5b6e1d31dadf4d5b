"""Run a Multiplexer over an aiohttp WebSocket (client or server side): reader, writer, keepalive.

`await run_tunnel(ws, mux, heartbeat=Heartbeat(10, 30), stop=event)` returns a `TunnelClose` saying why the
tunnel ended: the peer closed it, the peer sent malformed M-PROXY (1002, reason = the codec's message), the
peer went silent past the dead-peer timeout, the transport failed, or `stop` was set (1001 going away).
Every stream of the mux is closed when it returns. The WebSocket must be opened with `autoping=False` (we
answer pings ourselves and track every received message as a sign of life) and without aiohttp's own
heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from mproxy.tunnel.mux import Multiplexer, TunnelProtocolError
from mproxy.tunnel.wsframe import frame_sender

__all__ = [
    "CLOSE_GOING_AWAY", "CLOSE_PROTOCOL_ERROR", "Heartbeat", "TunnelClose", "WebSocketLike", "run_tunnel",
]

log = logging.getLogger("mproxy.tunnel")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008


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
    reason: str  # short machine-friendly: peer_closed, protocol_error, dead_peer, transport_error, shutdown
    detail: str  # human sentence
    code: int | None = None  # WebSocket close code (sent or received)

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class _Done(Exception):
    def __init__(self, close: TunnelClose) -> None:
        self.close = close


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
                await ws.ping()
            if now >= next_sweep:
                next_sweep = now + sweep_every
                mux.sweep_idle()

    async def stopper() -> TunnelClose:
        assert stop is not None
        await stop.wait()
        return TunnelClose("shutdown", "going away", CLOSE_GOING_AWAY)

    tasks = [asyncio.ensure_future(c) for c in (reader(), writer(), keepalive())]
    if stop is not None:
        tasks.append(asyncio.ensure_future(stopper()))
    result: TunnelClose
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = next(iter(done))
        try:
            result = first.result()
        except (ConnectionError, aiohttp.ClientError, RuntimeError, OSError) as exc:
            result = TunnelClose("transport_error", f"{type(exc).__name__}: {exc}")
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
    mux.close(str(result))
    if not ws.closed:
        code = result.code if result.reason in ("protocol_error", "shutdown") else CLOSE_NORMAL
        if result.reason == "dead_peer":
            code = CLOSE_GOING_AWAY
        with contextlib.suppress(Exception):
            # Close frames must fit in one write (ws 5.2 drops split ones): keep the reason short.
            await asyncio.wait_for(
                ws.close(code=code or CLOSE_NORMAL, message=result.detail.encode()[:120]), 2.0
            )
    return result
