"""A faster binary-frame sender for aiohttp WebSockets (used by run_tunnel; falls back to send_bytes).

aiohttp's writer copies a client frame three times (bytearray(message), then header + mask + payload) before
masking it; at tunnel rates that is a quarter of the sidecar's CPU. The multiplexer already hands over a
fresh bytearray per batch, so we mask it in place (aiohttp's C mask) and write the header and the payload
separately: no extra copy. Frames are written whole and synchronously, so they never interleave with the
pings, pongs and close frames aiohttp writes itself. aiohttp's internals are reached only through
mproxy.aiohttp_compat; if they are not as expected (another version), `frame_sender` returns the plain
`ws.send_bytes`. It also sets the transport's write-buffer
limits so that `send` waits until the previous batch left the process (see below; TLS transports need
other numbers than plain TCP for that, see `_no_buffering`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from mproxy.aiohttp_compat import raw_writer

__all__ = ["frame_sender"]

Sender = Callable[[bytearray], Awaitable[None]]

_OPCODE_BINARY = 0x82  # FIN + binary


def _header(n: int, mask_bit: int) -> bytes:
    if n < 126:
        return struct.pack("!BB", _OPCODE_BINARY, n | mask_bit)
    if n < 65536:
        return struct.pack("!BBH", _OPCODE_BINARY, 126 | mask_bit, n)
    return struct.pack("!BBQ", _OPCODE_BINARY, 127 | mask_bit, n)


def _no_buffering(transport: Any) -> dict[str, int]:
    """Write-buffer limits that pause the writer exactly while the transport holds unsent bytes.

    A plain TCP transport pauses when its buffer is over `high` and resumes at `low`: high=0 does it.
    The SSL transport (asyncio's sslproto and uvloop's copy of it) pauses when its buffer is *at or
    over* `high`, so with high=0 it pauses after every write, even one it flushed at once, and only
    re-checks when the peer sends something or the TCP transport below it resumes: a wss tunnel to a
    quiet peer moved one batch per peer message (issue 11). high=1 pauses it only while encrypted bytes
    are really waiting, and the TCP transport under it resumes it when they have gone."""
    if transport.get_extra_info("ssl_object") is not None:
        return {"high": 1, "low": 0}
    return {"high": 0}


def _write_both(transport: Any) -> Callable[[bytes, bytearray], None]:
    if type(transport).__module__.startswith("uvloop"):
        writelines = transport.writelines
        return lambda head, data: writelines((head, data))
    write = transport.write

    def twice(head: bytes, data: bytearray) -> None:
        write(head)
        write(data)

    return twice


def frame_sender(ws: Any) -> Sender:
    """A coroutine function sending one binary message (a bytearray we may mutate) on `ws`."""
    raw = raw_writer(ws)
    plain: Sender = ws.send_bytes
    if raw is None or raw.compress != 0:  # another aiohttp layout, or permessage-deflate: let aiohttp do it
        return plain
    transport = raw.transport
    use_mask = raw.use_mask
    mask_bit = 0x80 if use_mask else 0
    mask_fn = raw.mask
    # Hand the transport the next batch only once the last one is in the kernel: bytes waiting in the
    # transport's buffer are past the multiplexer's fair scheduler, so an interactive frame would queue
    # behind them (with the default 64 KiB high water, up to a batch more per hop under bulk).
    transport.set_write_buffer_limits(**_no_buffering(transport))
    # uvloop's writelines sends header and payload in one writev (one TLS flush over wss); with high=0 two
    # write() calls are two syscalls. asyncio's writelines (3.11) joins them, a copy: write twice there.
    write_both = _write_both(transport)

    async def send(data: bytearray) -> None:
        if raw.closing():
            raise ConnectionResetError("the tunnel WebSocket is closing")
        head = _header(len(data), mask_bit)
        if use_mask:
            key = os.urandom(4)
            mask_fn(key, data)
            head += key
        write_both(head, data)
        if raw.paused():
            await raw.drain()

    return send
