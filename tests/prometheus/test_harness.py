"""The query harness itself: a bug here would let a broken dashboard pass, so it is tested too."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from tests.prometheus.harness import exposed_names, metric_names, substitute

pytestmark = pytest.mark.prometheus

BOARD: dict[str, Any] = {"templating": {"list": [
    {"name": "datasource", "type": "datasource", "query": "prometheus"},
    {"name": "pod", "type": "query", "current": {"value": ["$__all"]}},
    {"name": "k", "type": "custom", "current": {"text": "10", "value": "10"}},
]}}


@pytest.mark.parametrize(("expr", "want"), [
    ('rate(m_total{pod=~"$pod"}[$__rate_interval])', 'rate(m_total{pod=~".*"}[1m])'),
    ('rate(m_total{pod=~"${pod}"}[${__rate_interval}])', 'rate(m_total{pod=~".*"}[1m])'),
    ('rate(m_total{pod=~"${pod:regex}", ns!~"[[pod]]"}[1m])', 'rate(m_total{pod=~".*", ns!~".*"}[1m])'),
    ('topk($k, sum by (client) (m{pod=~"$pod"}))', 'topk(10, sum by (client) (m{pod=~".*"}))'),
])
def test_substitute(expr: str, want: str) -> None:
    assert substitute(expr, BOARD) == want


def test_substitute_refuses_unknown_and_valueless_variables() -> None:
    with pytest.raises(ValueError, match="unknown variable"):
        substitute("topk($nope, m)", BOARD)
    with pytest.raises(ValueError, match="default value"):
        substitute("topk($pod, m)", BOARD)


def test_metric_names_skips_labels_functions_and_strings() -> None:
    expr = ('sum by (mproxy_label) (rate(mproxy_a_total{reason="mproxy_b", x=~"mproxy_c.*"}[1m]))'
            ' / on (pod) group_left mproxy_d_bucket + histogram_quantile(0.9, up) or vector(0)')
    assert metric_names(expr) == {"mproxy_a_total", "mproxy_d_bucket"}


def test_exposed_names_cover_untouched_families() -> None:
    registry = CollectorRegistry()
    Counter("mproxy_x_errors", "help", ["reason"], registry=registry)  # declared, never incremented
    Gauge("mproxy_x_up", "help", registry=registry).set(1)
    Histogram("mproxy_x_seconds", "help", registry=registry).observe(0.1)
    names = exposed_names(generate_latest(registry).decode())
    assert {"mproxy_x_errors_total", "mproxy_x_up", "mproxy_x_seconds_bucket", "mproxy_x_seconds_count",
            "mproxy_x_seconds_sum"} <= names
    assert "mproxy_x_other" not in names
