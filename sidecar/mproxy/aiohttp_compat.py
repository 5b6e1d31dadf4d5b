"""aiohttp's private internals, all in one place (checked by tests/unit/tunnel/test_aiohttp_compat.py).

tunnel/wsframe.py writes binary frames straight to the transport under an aiohttp WebSocket (aiohttp's
writer copies each frame three times), so it needs the writer, its transport and protocol, the protocol's
flow-control state and aiohttp's C mask. None of that is public API. `raw_writer` returns None when an
aiohttp version lays them out differently, and the caller falls back to the public `send_bytes`; the test
fails naming the aiohttp version and the missing attribute, so an upgrade that loses the fast path is seen
in CI instead of as a silent slowdown. Listening ports come from the public `AppRunner.addresses`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["RawWriter", "missing", "raw_writer", "transport_of"]

_Mask = Callable[[bytes, bytearray], None]
_mask: _Mask | None
try:
    from aiohttp._websocket.helpers import websocket_mask as _mask
except ImportError:  # pragma: no cover - another aiohttp layout
    _mask = None

_WRITER_ATTRS = ("transport", "protocol", "compress", "use_mask", "_closing")
_PROTOCOL_ATTRS = ("_paused", "_drain_helper")


def missing(ws: Any) -> list[str]:
    """The private names `raw_writer` needs that this aiohttp lacks for the open WebSocket `ws`."""
    gone = [] if _mask is not None else ["aiohttp._websocket.helpers.websocket_mask"]
    writer = getattr(ws, "_writer", None)
    if writer is None:
        return [*gone, "ws._writer"]
    gone += [f"ws._writer.{name}" for name in _WRITER_ATTRS if not hasattr(writer, name)]
    protocol = getattr(writer, "protocol", None)
    gone += [f"ws._writer.protocol.{name}" for name in _PROTOCOL_ATTRS if not hasattr(protocol, name)]
    return gone


class RawWriter:
    """The transport under an open aiohttp WebSocket and the writer state needed to write frames to it."""

    __slots__ = ("_protocol", "_writer", "compress", "mask", "transport", "use_mask")

    def __init__(self, writer: Any, mask: _Mask) -> None:
        self._writer = writer
        self._protocol: Any = writer.protocol
        self.transport: asyncio.Transport = writer.transport
        self.use_mask = bool(writer.use_mask)  # the client side masks its frames (RFC 6455 5.3)
        self.compress: int = writer.compress  # 0 unless permessage-deflate was negotiated
        self.mask = mask  # in place: mask(key, data)

    def closing(self) -> bool:
        """aiohttp has sent (or is sending) a close frame, or the transport is going away."""
        return bool(self._writer._closing) or self.transport.is_closing()

    def paused(self) -> bool:
        """The transport's buffer is over its high-water mark: wait for `drain()` before writing more."""
        return bool(self._protocol._paused)

    async def drain(self) -> None:
        await self._protocol._drain_helper()


def raw_writer(ws: Any) -> RawWriter | None:
    """Direct frame access to the open aiohttp WebSocket `ws`, or None on an aiohttp laid out otherwise."""
    if missing(ws) or _mask is None or ws._writer.transport is None:  # None: the connection is gone
        return None
    return RawWriter(ws._writer, _mask)


def transport_of(ws: Any) -> asyncio.Transport | None:
    """The transport under an aiohttp WebSocket, server or client side (None once it has none)."""
    transport: asyncio.Transport | None = getattr(getattr(ws, "_writer", None), "transport", None)
    return transport
