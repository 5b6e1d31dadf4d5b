"""Edge metrics: names only from grants, zero when their tunnels leave, bounded."""

from __future__ import annotations

from prometheus_client import generate_latest

from mproxy.metrics import edge as edge_metrics
from mproxy.metrics.edge import EdgeMetrics


def text(m: EdgeMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_names_come_from_grants_and_stay_at_zero() -> None:
    m = EdgeMetrics()
    m.set_tunnel_names({"a.test": 2})
    m.client_done("https", "a.test", "ok", 10, 20, 0.1)
    m.client_done("https", "random-client-name.test", "ok", 1, 1, 0.1)  # not granted: folded
    out = text(m)
    assert 'mproxy_edge_name_tunnels{name="a.test"} 2.0' in out
    assert 'mproxy_edge_bytes_total{direction="in",name="a.test",protocol="https"} 10.0' in out
    assert "random-client-name" not in out and 'name="(other)"' in out
    m.set_tunnel_names({})
    assert 'mproxy_edge_name_tunnels{name="a.test"} 0.0' in text(m)


def test_cardinality_is_capped(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(edge_metrics, "MAX_NAMES", 3)
    m = EdgeMetrics()
    m.set_tunnel_names({"a.t": 1, "b.t": 1, "c.t": 1})
    m.set_tunnel_names({"b.t": 1, "c.t": 1, "d.t": 1})  # a.t is idle: evicted to make room
    out = text(m)
    assert 'name="a.t"' not in out and 'mproxy_edge_name_tunnels{name="d.t"} 1.0' in out
    m.set_tunnel_names({"b.t": 1, "c.t": 1, "d.t": 1, "e.t": 1})  # nothing idle: e.t is not published
    assert 'name="e.t"' not in text(m)
