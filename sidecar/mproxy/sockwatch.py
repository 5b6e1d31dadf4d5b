"""Notice a peer that leaves while we are not reading its socket.

A transport whose reading is paused (flow control) gets no `eof_received` or `connection_lost` from the
event loop: a client that resets or closes meanwhile would hold its fd, its stream and the far side's
socket until the idle timeout (900 s by default). `PausedWatch` polls the kernel's TCP state of such a
socket (TCP_INFO, one getsockopt) every `interval` seconds while reading is paused:
- the peer reset the connection (state CLOSE): `on_reset()`; the owner ends the stream both ways;
- the peer sent FIN (CLOSE_WAIT and later): `on_fin()`; the owner resumes reading, so the bytes still in
  the kernel buffer (bounded: the peer can send no more) and then the EOF arrive in order, exactly as for
  a socket that was never paused.
Where TCP_INFO does not exist (not Linux, not TCP) the watch does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable

__all__ = ["POLL_SECONDS", "PausedWatch", "peer_state", "reset"]

POLL_SECONDS = 1.0
_OPEN = frozenset({1, 2, 3, 4, 5})  # ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2
_FIN = frozenset({6, 8, 9, 11})  # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING: the peer sent FIN
_CLOSE = 7


def peer_state(transport: asyncio.BaseTransport) -> str:
    """"open", "fin", "reset", or "unknown" (no TCP_INFO) for a transport's TCP socket."""
    opt = getattr(socket, "TCP_INFO", None)
    sock = transport.get_extra_info("socket")
    if opt is None or sock is None:
        return "unknown"
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, opt, 8)
    except (OSError, ValueError, AttributeError):
        return "reset" if transport.is_closing() else "unknown"
    if not info:
        return "unknown"
    state = info[0]
    if state in _OPEN:
        return "open"
    if state in _FIN:
        return "fin"
    if state == _CLOSE:
        return "reset"
    return "unknown"


class PausedWatch:
    """Poll one transport while its reading is paused; `start()` when pausing, `stop()` when resuming."""

    __slots__ = ("_handle", "_interval", "_on_fin", "_on_reset", "_transport")

    def __init__(self, transport: asyncio.BaseTransport, *, on_reset: Callable[[], None],
                 on_fin: Callable[[], None], interval: float = POLL_SECONDS) -> None:
        self._transport = transport
        self._on_reset = on_reset
        self._on_fin = on_fin
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None

    @property
    def active(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        if self._handle is None and not self._transport.is_closing():
            self._handle = asyncio.get_running_loop().call_later(self._interval, self._poll)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _poll(self) -> None:
        self._handle = None
        if self._transport.is_closing():
            return
        state = peer_state(self._transport)
        if state == "reset":
            self._on_reset()
        elif state == "fin":
            self._on_fin()
        elif state == "open":
            self.start()
        # "unknown": no TCP_INFO here; polling again would not help


def reset(transport: asyncio.Transport) -> None:
    """Close with a TCP reset (RST), not a FIN: the peer must not take a truncated stream for a whole one.

    transport.abort() alone drops unsent bytes but still closes with FIN; SO_LINGER 0 makes close() reset."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
