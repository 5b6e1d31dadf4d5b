"""The edge's announced replica count (`mproxy_edge_replicas_*`), on the relay's registry.

`announced` is what every tunnel upgrade says now (the static `replicas`, or the live EndpointSlice count);
the source series exist only with `replicasFrom`, so a static edge shows no always-down source.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ReplicaMetrics"]


class ReplicaMetrics:
    def __init__(self, registry: CollectorRegistry, live: bool) -> None:
        self.announced = Gauge("mproxy_edge_replicas_announced", "Edge replicas this edge announces to "
                               "sidecars (X-Mproxy-Edge-Replicas).", registry=registry)
        scratch = registry if live else CollectorRegistry()  # unexported when the count is static
        self.source_up = Gauge("mproxy_edge_replicas_source_up", "1 while the last EndpointSlice list or "
                               "watch succeeded (replicasFrom); 0: the last count stays announced.",
                               registry=scratch)
        self.errors = Counter("mproxy_edge_replicas_source_errors_total", "Failed EndpointSlice lists or "
                              "watches (replicasFrom), each retried with backoff.", registry=scratch)
