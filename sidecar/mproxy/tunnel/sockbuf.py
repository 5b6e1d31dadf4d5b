"""Size a tunnel socket's kernel send buffer from its measured round-trip time.

With kernel autotuning a saturated tunnel queues megabytes in socket buffers, and every interactive frame
waits behind them (100+ ms p99 on loopback in docs/benchmarks/dataplane.md). A fixed small buffer fixes
that but caps throughput at buffer / RTT, far too low towards a distant edge. "auto" sizes the buffer for
`target_rate` at the path's minimum RTT the kernel measures (TCP_INFO), clamped to [floor, ceiling], and
re-tunes as it moves: about 64 KiB on loopback or in a region, megabytes across continents.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["auto_send_buffer", "set_send_buffer", "tcp_rtt_seconds"]

_TCPI_RTT_OFFSET = 68  # struct tcp_info: u32 tcpi_rtt (microseconds) on Linux
_TCPI_MIN_RTT_OFFSET = 148  # u32 tcpi_min_rtt (Linux 4.6+)
FLOOR = 64 * 1024
CEILING = 8 * 1024 * 1024
TARGET_RATE = 100e6  # bytes per second per tunnel worth keeping in flight


def tcp_rtt_seconds(sock: socket.socket) -> float | None:
    """The path's RTT of a connected TCP socket, or None where TCP_INFO is unavailable.

    The minimum RTT seen, not the smoothed one: the smoothed RTT includes the queueing delay the buffer
    causes, and sizing the buffer from it would feed back into more queueing."""
    opt = getattr(socket, "TCP_INFO", None)
    if opt is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, opt, 232)
    except OSError:
        return None
    offset = _TCPI_MIN_RTT_OFFSET if len(info) >= _TCPI_MIN_RTT_OFFSET + 4 else _TCPI_RTT_OFFSET
    if len(info) < offset + 4:
        return None
    rtt_us: int = struct.unpack_from("I", info, offset)[0]
    if not rtt_us and offset == _TCPI_MIN_RTT_OFFSET:  # no sample yet
        rtt_us = struct.unpack_from("I", info, _TCPI_RTT_OFFSET)[0]
    return rtt_us / 1e6


def auto_send_buffer(rtt: float | None, *, floor: int = FLOOR, ceiling: int = CEILING,
                     rate: float = TARGET_RATE) -> int:
    if rtt is None:
        return ceiling
    return int(min(ceiling, max(floor, rtt * rate)))


def set_send_buffer(sock: socket.socket, size: int) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        return False
    return True
