"""Sidecar metrics: label tiers, the client cardinality guard (evict, fold into "other"), tunnel gauges."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mproxy.metrics.guard import ClientGuard
from mproxy.metrics.sidecar import SidecarMetrics


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_client_tier_counts_per_route_and_client() -> None:
    m = SidecarMetrics(tier="client", max_clients=10)
    s = m.stream_opened("web", "203.0.113.5")
    s.add_bytes(100, 2000)
    s.pause("relay")
    s.error("backend_econnrefused")
    reg = m.registry
    assert value(reg, "mproxy_sidecar_streams_opened_total", route="web", client="203.0.113.5") == 1
    assert value(reg, "mproxy_sidecar_streams_active", route="web", client="203.0.113.5") == 1
    assert value(reg, "mproxy_sidecar_received_bytes_total", route="web", client="203.0.113.5") == 100
    assert value(reg, "mproxy_sidecar_sent_bytes_total", route="web", client="203.0.113.5") == 2000
    assert value(reg, "mproxy_sidecar_pauses_total", route="web", client="203.0.113.5",
                 direction="relay") == 1
    assert value(reg, "mproxy_sidecar_stream_errors_total", route="web", client="203.0.113.5",
                 reason="backend_econnrefused") == 1
    s.close()
    s.close()  # idempotent
    assert value(reg, "mproxy_sidecar_streams_active", route="web", client="203.0.113.5") == 0
    assert value(reg, "mproxy_sidecar_stream_duration_seconds_count", route="web") == 1


def test_guard_evicts_least_recent_and_folds_into_other() -> None:
    m = SidecarMetrics(tier="client", max_clients=2)
    reg = m.registry
    a = m.stream_opened("r", "1.1.1.1")
    a.add_bytes(10, 0)
    b = m.stream_opened("r", "2.2.2.2")
    b.add_bytes(20, 0)
    a.add_bytes(1, 0)  # 1.1.1.1 is now the most recently seen
    c = m.stream_opened("r", "3.3.3.3")  # evicts 2.2.2.2
    c.add_bytes(30, 0)
    assert value(reg, "mproxy_sidecar_received_bytes_total", route="r", client="2.2.2.2") is None
    assert value(reg, "mproxy_sidecar_received_bytes_total", route="r", client="other") == 20
    assert value(reg, "mproxy_sidecar_received_bytes_total", route="r", client="1.1.1.1") == 11
    assert value(reg, "mproxy_sidecar_streams_active", route="r", client="other") == 1
    assert value(reg, "mproxy_sidecar_metrics_client_evictions_total") == 1
    # The evicted stream keeps counting, into "other", and its gauge comes down there.
    b.add_bytes(5, 0)
    b.close()
    assert value(reg, "mproxy_sidecar_received_bytes_total", route="r", client="other") == 25
    assert value(reg, "mproxy_sidecar_streams_active", route="r", client="other") == 0
    # Totals are conserved across eviction.
    total = sum(s.value for fam in reg.collect() if fam.name == "mproxy_sidecar_received_bytes"
                for s in fam.samples if s.name.endswith("_total"))
    assert total == 10 + 20 + 1 + 30 + 5
    # Never more than max_clients live client values (+ other).
    clients = {s.labels["client"] for fam in reg.collect() if fam.name == "mproxy_sidecar_streams_opened"
               for s in fam.samples if s.name.endswith("_total")}
    assert clients == {"1.1.1.1", "3.3.3.3", "other"}


def test_route_and_off_tiers_have_no_client_label() -> None:
    route = SidecarMetrics(tier="route")
    route.stream_opened("web", "1.2.3.4").add_bytes(1, 1)
    text = generate_latest(route.registry).decode()
    assert 'mproxy_sidecar_received_bytes_total{route="web"} 1.0' in text
    assert "1.2.3.4" not in text
    off = SidecarMetrics(tier="off")
    s = off.stream_opened("web", "1.2.3.4")
    s.add_bytes(3, 4)
    s.close()
    text = generate_latest(off.registry).decode()
    assert "mproxy_sidecar_received_bytes_total 3.0" in text
    assert "web" not in text and "1.2.3.4" not in text
    with pytest.raises(ValueError, match="tier"):
        SidecarMetrics(tier="everything")


def test_tunnel_gauges_tell_disconnected_from_idle() -> None:
    m = SidecarMetrics()
    m.tunnel_up("edge.example.com:443", "0")
    reg = m.registry
    assert value(reg, "mproxy_sidecar_tunnel_connected", edge="edge.example.com:443", connection="0") == 1
    assert (value(reg, "mproxy_sidecar_tunnel_last_connected_timestamp_seconds", edge="edge.example.com:443",
                  connection="0") or 0) > 1e9
    m.tunnel_down("edge.example.com:443", "0", "dead_peer")
    assert value(reg, "mproxy_sidecar_tunnel_connected", edge="edge.example.com:443", connection="0") == 0
    assert value(reg, "mproxy_sidecar_tunnel_reconnects_total", edge="edge.example.com:443",
                 reason="dead_peer") == 1
    # Two instances do not collide (per-instance registries).
    SidecarMetrics()


def test_guard_other_is_reserved() -> None:
    evicted: list[str] = []
    g = ClientGuard(1, lambda s: evicted.append(s.client))
    assert g.touch("other").client == "other_"
    g.touch("x")
    assert evicted == ["other_"]
    with pytest.raises(ValueError):
        ClientGuard(0, lambda s: None)
