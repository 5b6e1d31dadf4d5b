"""The HTTP router metrics (mproxy/metrics/http.py): series start at 0 per configured route, label values
come from the config only, and a reload that drops a route or router removes its series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from mproxy.metrics.http import NO_ROUTE, HttpMetrics


def _value(reg: CollectorRegistry, router: str, route: str, code: str) -> float | None:
    return reg.get_sample_value("mproxy_sidecar_http_requests_total",
                                {"router": router, "route": route, "code": code})


def test_series_follow_the_config() -> None:
    reg = CollectorRegistry()
    m = HttpMetrics(reg)
    m.configure([("web", ("a", "b")), ("api", ("c",))])
    assert _value(reg, "web", "a", "2xx") == 0 and _value(reg, "web", NO_ROUTE, "4xx") == 0
    m.answered("web", "a", 204)
    m.answered("web", "a", 503)
    m.answered("web", "a", 99)  # out of range: clamped to a known class, never a new value
    m.answered("web", "zzz", 200)  # not configured: not counted (no unbounded label values)
    m.answered("nope", "a", 200)
    assert (_value(reg, "web", "a", "2xx"), _value(reg, "web", "a", "5xx"), _value(reg, "web", "a", "1xx")) \
        == (1, 1, 1)
    assert _value(reg, "web", "zzz", "2xx") is None and _value(reg, "nope", "a", "2xx") is None
    m.configure([("web", ("a",))])
    assert _value(reg, "web", "a", "2xx") == 1  # kept
    assert _value(reg, "web", "b", "2xx") is None and _value(reg, "api", "c", "2xx") is None
    assert reg.get_sample_value("mproxy_sidecar_http_requests_active", {"router": "api"}) is None
    assert reg.get_sample_value("mproxy_sidecar_http_requests_active", {"router": "web"}) == 0
