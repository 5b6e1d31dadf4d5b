"""Dashboards and alerts against a real Prometheus scraping real mproxy processes (see conftest.py).

Every dashboard query must parse and run; the core panels must show data after traffic; every metric name
the dashboards and alerts use must be declared by a real process; every alert rule must evaluate cleanly.
"""

from __future__ import annotations

import math
import urllib.request
from typing import Any

import pytest
from tests.prometheus.harness import (
    PrometheusAPI,
    Target,
    alert_rules,
    dashboard_targets,
    exposed_names,
    metric_names,
    wait_for,
)
from tests.prometheus.stack import Stack
from tests.prometheus.test_dashboards import CORE

pytestmark = pytest.mark.prometheus

TARGETS = dashboard_targets()


def _finite(result: list[dict[str, Any]]) -> list[float]:
    values = [float(r["value"][1]) for r in result]
    return [v for v in values if math.isfinite(v)]


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
def test_query_runs_on_real_prometheus(prometheus: PrometheusAPI, target: Target) -> None:
    answer = prometheus.query(target.expr)
    assert answer["status"] == "success", f"{target.expr}\n{answer.get('errorType')}: {answer.get('error')}"
    result = answer["data"]["result"]
    want = CORE.get((target.dashboard, target.panel))
    if want == "data":
        assert _finite(result), f"core panel {target.id} shows no data after traffic: {target.expr}: {result}"
    elif want == "positive":
        assert [v for v in _finite(result) if v > 0], (
            f"core panel {target.id} shows nothing above 0 after traffic: {target.expr}: {result}"
        )


def test_referenced_metrics_exist_in_a_real_scrape(stack: Stack) -> None:
    """Every mproxy_* name in a dashboard or an alert is declared by a real process: catches renames.

    The operator's names come from its own registry, served alone (see stack.py).
    """
    exposed: set[str] = set()
    for url in stack.metrics_urls():
        with urllib.request.urlopen(url, timeout=5) as resp:
            exposed |= exposed_names(resp.read().decode())
    referenced: dict[str, set[str]] = {}
    for target in TARGETS:
        for name in metric_names(target.expr):
            referenced.setdefault(name, set()).add(target.id)
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            referenced.setdefault(name, set()).add(f"alert {rule['alert']}")
    assert referenced
    missing = {name: sorted(where) for name, where in referenced.items() if name not in exposed}
    assert not missing, f"metrics no process exposes (renamed?): {missing}"


# What each alert must be doing on the stack (see stack.py): the expressions select real series, not only
# parse. Pending = its condition holds and its `for` runs; nothing fires within seconds.
ALERT_STATES = {
    "MproxyTunnelUnavailable": "pending",  # Tunnel "lonely": its only pod has no connected tunnel
    "MproxyTunnelDown": "pending",  # that pod, sidecar-lonely, whose token the edge refuses
    "MproxyTunnelFlapping": "inactive",  # failed dials (dead edge URL, refused token) are not flaps
    "MproxyTunnelEdgeMissing": "inactive",  # each sidecar holds its one edge (lonely holds none: TunnelDown)
    "MproxyBackendErrorsHigh": "pending",  # dead.test: 1 stream in 8 fails
    "MproxyEdgeNoTunnelForName": "inactive",  # app.test and dead.test keep their tunnel
    "MproxyEdgeTokensRefused": "pending",  # sidecar-lonely's token: bad_signature
    "MproxyOperatorReconcileErrors": "inactive",
    "MproxyWebhookLatencyHigh": "inactive",
    "MproxyEdgeTaskRestarting": "inactive",  # nothing fails in this setup
    "MproxySidecarTaskRestarting": "inactive",
    "MproxyEdgePeerUnreachable": "pending",  # the edge's peer 127.0.0.2 never answers (stack.py)
}


def test_alert_rules_evaluate_on_real_data(prometheus: PrometheusAPI) -> None:
    def states() -> dict[str, dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        return {r["name"]: r for g in groups for r in g["rules"]}

    rules = states()
    assert set(rules) == {r["alert"] for r in alert_rules()} == set(ALERT_STATES)
    for name, rule in rules.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
    # Rules evaluate every second; give the last scrapes one evaluation to show.
    wait_for(lambda: all(r["state"] == ALERT_STATES[n] for n, r in states().items()), 5,
             f"alert states {ALERT_STATES}")
    pending = [a for r in states().values() for a in r.get("alerts", []) if a["state"] == "pending"]
    who = ("tunnel", "pod", "reason")
    assert {a["labels"]["alertname"]: tuple(a["labels"].get(k) for k in who) for a in pending} == {
        "MproxyTunnelUnavailable": ("lonely", None, None),
        "MproxyTunnelDown": ("lonely", "mproxy-sidecar-1", None),
        "MproxyBackendErrorsHigh": ("shop", "mproxy-sidecar-0", None),
        "MproxyEdgeTokensRefused": (None, None, "bad_signature"),
        "MproxyEdgePeerUnreachable": (None, "mproxy-edge-0", None),
    }
