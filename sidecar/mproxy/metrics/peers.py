"""Forwarding between edge replicas (`mproxy_edge_forwards_*`, `mproxy_edge_peers_*`), on the edge registry.

Labels are fixed sets, every series starts at 0. `out`: clients this edge had no tunnel for and handed to a
peer; `in`: clients a peer handed to this edge on its forward port.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["IN_RESULTS", "OUT_RESULTS", "PeerMetrics"]

OUT_RESULTS = (
    "ok",  # a peer took the client
    "no_peer",  # no fresh peer grants the name or port: the client was refused as before
    "peer_refused",  # every peer tried answered that it cannot route it (its tunnel went away)
    "connect_failed",  # no peer tried could be reached within connectTimeoutSeconds
    "limit",  # maxForwards clients were already being forwarded
    "error",  # a bug; logged
)
IN_RESULTS = (
    "ok",  # routed to a local tunnel
    "refused",  # no local tunnel (left) for it: the peer was told, it may try another
    "bad_auth",  # the TLV's HMAC did not match: not a peer, or another secret
    "stale",  # the header's time is outside clockSkewSeconds
    "replay",  # the same signed header was used twice
    "bad_header",  # no valid PROXY v2 header with the forward TLV in time
    "limit",  # maxForwards forwarded clients were already open
)


class PeerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        p = "mproxy_edge_"
        self.out = Counter(p + "forwards_out", "Clients this edge had no tunnel for, by what forwarding them "
                           "to a peer edge gave (ok, no_peer, peer_refused, connect_failed, limit).",
                           ("result",), registry=registry)
        self.inbound = Counter(p + "forwards_in", "Clients peer edges forwarded to this edge, by result (ok, "
                               "refused, bad_auth, stale, replay, bad_header, limit).", ("result",),
                               registry=registry)
        self.active = Gauge(p + "forwards_active", "Forwarded clients open now, by direction (in, out).",
                            ("direction",), registry=registry)
        self.known = Gauge(p + "peers_known", "Peer edges found (resolved or listed), this edge excluded.",
                           registry=registry)
        self.reachable = Gauge(p + "peers_reachable", "Peer edges whose grants were fetched within "
                               "peers.expireSeconds.", registry=registry)
        self._out = {result: self.out.labels(result) for result in OUT_RESULTS}
        self._in = {result: self.inbound.labels(result) for result in IN_RESULTS}
        for direction in ("in", "out"):
            self.active.labels(direction)

    def forwarded_out(self, result: str) -> None:
        self._out[result].inc()

    def forwarded_in(self, result: str) -> None:
        self._in[result].inc()
