"""A UDP client's stream: every datagram is exactly one data frame, and a full queue drops, never blocks.

The multiplexer makes a `DatagramStream` for every stream whose service is `udp` (both roles). It differs
from a byte stream in two ways only:
- Framing: the writer takes one whole queued datagram per turn as one frame (the header's datalen keeps its
  boundary); datagrams are never merged or split. A datagram may take a batch past `batch_size` by at most
  its own size (<= 65,535 bytes), so the writer never spins on one it cannot fit.
- No backpressure: UDP has no way to slow its sender, so `send_datagram()` never pauses the producer. When
  the queue holds `MAX_QUEUED` datagrams or `high_water` bytes, or the peer sent `pause` for this client, the
  datagram is dropped and the reason returned for the caller to count (`mproxy_*_udp_dropped_total`).
Inbound needs nothing special: the parser hands every data frame over whole, as one `data_received`.
"""

from __future__ import annotations

from mproxy.codec import pack_checked_header
from mproxy.tunnel.mux import Stream

__all__ = ["MAX_QUEUED", "SERVICE", "DatagramStream"]

SERVICE = "udp"
MAX_QUEUED = 256  # datagrams waiting for the tunnel writer, per client; DNS bursts fit many times over


class DatagramStream(Stream):
    __slots__ = ()

    def send_datagram(self, data: bytes) -> str | None:
        """Queue one datagram as one frame; None if queued, else why it was dropped (a metric reason)."""
        if self.closed or self._want_eof:
            return "closed"
        if self._remote_paused:
            return "paused"
        q = self._out
        full = q is not None and len(q) >= MAX_QUEUED
        if full or self._out_size + len(data) > self.mux.limits.high_water:
            return "queue_full"
        if not data:
            return "empty"  # a zero-length frame would be read as nothing by every peer
        if len(data) > self.mux.limits.frame_size:
            return "oversize"  # never split: our peer's frame limit is configured like ours
        self._enqueue(data)
        return None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Byte-stream writes are datagrams here too (dropped silently when the queue is full)."""
        self.send_datagram(bytes(data))

    def _take(self, budget: int, out: list[bytes | memoryview]) -> int:
        used = 0
        q = self._out
        if q:
            datagram = q.popleft()
            n = len(datagram)
            header = pack_checked_header(self.addr, SERVICE, n, self.serviceport, self.name)
            out.append(header)
            out.append(datagram)
            self._out_size -= n
            used = len(header) + n
        if not q:
            self._out = None
            used += self._take_end(out)
        return used
