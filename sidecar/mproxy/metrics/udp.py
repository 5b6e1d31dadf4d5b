"""UDP metrics for either role (`mproxy_edge_udp_*`, `mproxy_sidecar_udp_*`), on the role's registry.

Labels are bounded by construction: `port` is a listener's public port (edge, from the config) and `route` a
route name (sidecar, from the config); `reason` and `direction` are fixed sets, every series starts at 0.
direction `in` = client to tunnel (edge) / tunnel to backend (sidecar); `out` the other way.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["DROP_REASONS", "UdpMetrics"]

# Why a datagram was dropped (never split, never queued past a bound). Both roles use the same set.
DROP_REASONS = (
    "oversize",  # over the listener's maxDatagramBytes
    "rate_limited",  # the client's datagramRate
    "tunnel_rate_limited",  # the tunnel's tunnelDatagramRate
    "queue_full",  # the tunnel's queue for this client is at its bound
    "paused",  # the peer sent `pause` for this client
    "client_slow",  # the edge's socket buffer towards the client is full
    "backend_slow",  # the sidecar's socket buffer towards the backend is full
    "connecting",  # held while the backend socket opens, past its bound
    "no_tunnel",  # a new client and no tunnel for its port
    "tunnel_full",  # a new client and every tunnel at its stream limit
    "too_many_clients",  # the listener's maxClients, or the per-address table is full
    "client_limit",  # maxStreamsPerClient / connectionRate for a new client address
    "client_id_in_use",  # the address:port names a TCP stream in every tunnel, or waited too long to reopen
    "draining",  # a new client while the edge shuts down
    "closed",  # the client's stream is ending
    "empty",  # a zero-length datagram (no M-PROXY peer can tell it from nothing)
)
DIRECTIONS = ("in", "out")


class UdpMetrics:
    def __init__(self, registry: CollectorRegistry, role: str, key: str) -> None:
        p = f"mproxy_{role}_udp_"
        self.key = key
        self.datagrams = Counter(p + "datagrams", f"UDP datagrams relayed, by {key} and direction.",
                                 (key, "direction"), registry=registry)
        self.bytes = Counter(p + "bytes", f"UDP payload bytes relayed, by {key} and direction.",
                             (key, "direction"), registry=registry)
        self.dropped = Counter(p + "dropped", "UDP datagrams dropped, by reason (oversize, queue_full, "
                               "rate_limited, ...).", ("reason",), registry=registry)
        self.clients = Gauge(p + "clients", f"UDP client streams open now, by {key}.", (key,),
                             registry=registry)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self._children: dict[tuple[str, str], tuple[Counter, Counter]] = {}
        self._drops = {reason: self.dropped.labels(reason) for reason in DROP_REASONS}

    def start(self, value: str) -> None:
        """Create the series of one port or route at 0."""
        for direction in DIRECTIONS:
            self._pair(value, direction)
        self.clients.labels(value)

    def _pair(self, value: str, direction: str) -> tuple[Counter, Counter]:
        pair = self._children.get((value, direction))
        if pair is None:
            pair = self._children[(value, direction)] = (self.datagrams.labels(value, direction),
                                                         self.bytes.labels(value, direction))
        return pair

    def relayed(self, value: str, direction: str, size: int) -> None:
        datagrams, nbytes = self._pair(value, direction)
        datagrams.inc()
        nbytes.inc(size)

    def drop(self, reason: str) -> None:
        self._drops[reason].inc()

    def client_count(self, value: str, delta: int) -> None:
        self.clients.labels(value).inc(delta)
