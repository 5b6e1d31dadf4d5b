"""No metric of either role has a label that Prometheus adds as a target label when it scrapes: a clash
makes Prometheus rename ours to `exported_<label>` (a ServiceMonitor adds `service`), and the dashboards and
alerts, which use our name, silently match nothing."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from mproxy.metrics.edge import EdgeMetrics
from mproxy.metrics.http import HttpMetrics
from mproxy.metrics.sidecar import SidecarMetrics

TARGET_LABELS = {"service", "namespace", "pod", "job", "instance", "container", "endpoint", "tunnel"}


def _labelnames(registry: CollectorRegistry) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            out.setdefault(family.name, set()).update(sample.labels)
    return out


def _edge() -> CollectorRegistry:
    m = EdgeMetrics()
    m.set_tunnel_names({"a.test": 1})
    m.client_done("https", "a.test", "ok", 1, 1, 0.1)
    m.client_rejected("tcp", "no_tunnel")
    m.tunnel_rejects.labels("expired").inc()
    return m.registry


def _sidecar() -> CollectorRegistry:
    m = SidecarMetrics(tier="client")
    meter = m.stream_opened("web", "203.0.113.9")
    meter.add_bytes(1, 1)
    meter.error("idle")
    meter.pause("relay")
    meter.close()
    m.observe_connect("web", 0.01)
    m.tunnel_up("edge.test:443", "0")
    m.tunnel_down("edge.test:443", "0", "dead_peer")
    http = HttpMetrics(m.registry)
    http.configure([("web", ("route-a",))])
    http.answered("web", "route-a", 200)
    http.duration.labels("web").observe(0.01)
    return m.registry


@pytest.mark.parametrize("make", [_edge, _sidecar], ids=["edge", "sidecar"])
def test_no_label_is_a_prometheus_target_label(make) -> None:  # type: ignore[no-untyped-def]
    names = _labelnames(make())
    assert names, "no metrics collected"
    clashes = {metric: labels & TARGET_LABELS for metric, labels in names.items() if labels & TARGET_LABELS}
    assert not clashes, f"labels that Prometheus target labels would rename to exported_*: {clashes}"


def test_the_edge_listener_kind_is_the_protocol_label() -> None:
    names = _labelnames(_edge())
    for metric in ("mproxy_edge_client_connections", "mproxy_edge_client_connections_active",
                   "mproxy_edge_bytes", "mproxy_edge_client_connection_duration_seconds"):
        assert "protocol" in names[metric], (metric, names[metric])
