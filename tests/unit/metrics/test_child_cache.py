"""Cached metric children must not outlive the series the cardinality guards remove."""

from __future__ import annotations

import pytest

from mproxy.metrics import edge as edge_metrics
from mproxy.metrics.edge import EdgeMetrics
from mproxy.metrics.sidecar import SidecarMetrics


def test_sidecar_client_evicted_then_back_is_counted_again() -> None:
    m = SidecarMetrics(max_clients=1)
    m.stream_opened("web", "10.0.0.1").add_bytes(5, 0)
    m.stream_opened("web", "10.0.0.2")  # evicts 10.0.0.1: its series fold into "other"
    r = m.registry
    assert r.get_sample_value("mproxy_sidecar_received_bytes_total",
                              {"route": "web", "client": "10.0.0.1"}) is None
    m.stream_opened("web", "10.0.0.1").add_bytes(7, 0)  # back: a fresh series, not the removed child
    assert r.get_sample_value("mproxy_sidecar_received_bytes_total",
                              {"route": "web", "client": "10.0.0.1"}) == 7
    assert r.get_sample_value("mproxy_sidecar_received_bytes_total", {"route": "web", "client": "other"}) == 5


def test_edge_name_evicted_then_back_is_counted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_metrics, "MAX_NAMES", 1)
    m = EdgeMetrics()
    m.set_tunnel_names({"a.test": 1})
    m.client_done("https", "a.test", "ok", 3, 0, 0.1)
    m.set_tunnel_names({"b.test": 1})  # a.test has no tunnel: evicted with its series
    r = m.registry
    assert r.get_sample_value("mproxy_edge_bytes_total",
                              {"protocol": "https", "name": "a.test", "direction": "in"}) is None
    m.set_tunnel_names({"a.test": 1})
    m.client_done("https", "a.test", "ok", 4, 0, 0.1)
    assert r.get_sample_value("mproxy_edge_bytes_total",
                              {"protocol": "https", "name": "a.test", "direction": "in"}) == 4
    assert r.get_sample_value("mproxy_edge_client_connections_total",
                              {"protocol": "https", "name": "a.test", "result": "ok"}) == 1
    m.client_active("https", 1)
    assert r.get_sample_value("mproxy_edge_client_connections_active", {"protocol": "https"}) == 1
