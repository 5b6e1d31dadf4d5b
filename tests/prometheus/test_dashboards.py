"""The shipped Grafana dashboards: generated from their source, and following the conventions."""

from __future__ import annotations

import re
from typing import Any

import pytest
from tests.prometheus.harness import (
    DASHBOARD_DIR,
    dashboard_files,
    dashboard_source,
    dashboard_targets,
    iter_panels,
    load_dashboard,
)

pytestmark = pytest.mark.prometheus

TARGETS = dashboard_targets()

# Panels that must show data once traffic has gone through the stack, by (dashboard uid, panel title):
# "data" = some finite value (a zero counts), "positive" = every query of the panel has a value above 0.
# Every other query must still run; it may be empty in a healthy system (no reconnects, no refusals).
CORE = {
    ("mproxy-tunnels", "Connected sidecars"): "positive",
    ("mproxy-tunnels", "Disconnected sidecars"): "data",
    ("mproxy-tunnels", "Streams open now"): "data",
    ("mproxy-tunnels", "Connected pods per Tunnel"): "positive",
    ("mproxy-tunnels", "Connected, per tunnel"): "positive",
    ("mproxy-tunnels", "Disconnected vs idle"): "positive",
    ("mproxy-tunnels", "Connected for"): "positive",
    ("mproxy-tunnels", "Streams opened"): "positive",
    ("mproxy-tunnels", "Bytes in / out"): "positive",
    ("mproxy-tunnels", "Stream errors by reason"): "positive",
    ("mproxy-tunnels", "Stream error ratio"): "positive",
    ("mproxy-tunnels", "Backend connect latency"): "positive",
    ("mproxy-tunnels", "Stream duration"): "positive",
    ("mproxy-clients", "Bytes from clients"): "positive",
    ("mproxy-clients", "Bytes to clients"): "positive",
    ("mproxy-clients", "Streams per client"): "positive",
    ("mproxy-clients", "Top clients by bytes (1h)"): "positive",
    ("mproxy-clients", "Share of bytes in \"other\""): "positive",
    ("mproxy-clients", "Clients tracked"): "positive",
    ("mproxy-clients", "Streams per route"): "positive",
    ("mproxy-clients", "Bytes per route"): "positive",
    ("mproxy-clients", "Backend connect latency per route"): "positive",
    ("mproxy-edge", "Tunnels connected"): "positive",
    ("mproxy-edge", "Names served"): "positive",
    ("mproxy-edge", "Tunnels per name"): "positive",
    ("mproxy-edge", "Tunnel connects and refusals"): "data",
    ("mproxy-edge", "Client connections by protocol and result"): "positive",
    ("mproxy-edge", "Rejects by reason"): "positive",
    ("mproxy-edge", "Client connections open"): "data",
    ("mproxy-edge", "Client connection duration"): "positive",
    ("mproxy-edge", "Bytes in / out"): "positive",
    ("mproxy-edge", "Bytes per name"): "positive",
    # The operator's registry is served without an operator at work (see stack.py): series, all zero.
    ("mproxy-operator", "Tunnels ready"): "data",
    ("mproxy-operator", "Reconciles"): "data",
    ("mproxy-operator", "Reconcile errors"): "data",
    ("mproxy-operator", "Injections by outcome"): "data",
    ("mproxy-operator", "Operator CPU"): "data",
    ("mproxy-operator", "Operator memory"): "positive",
}


def test_dashboards_match_their_source() -> None:
    """The JSON in the chart is what generate.py writes (regenerate it, never hand-edit)."""
    source = dashboard_source()
    expected = {f"mproxy-{name}.json": source.render(build) for name, build in source.DASHBOARDS.items()}
    actual = {p.name: p.read_text() for p in dashboard_files()}
    assert actual == expected, "run: python charts/mproxy/dashboards/generate.py"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_conventions(path: Any) -> None:
    board = load_dashboard(path)
    assert board["uid"] == path.stem, "the uid is the file name: stable across installs, links keep working"
    assert board["title"].startswith("mproxy / ")
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in iter_panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in iter_panels(board):
        if panel["type"] == "row":
            continue
        where = f"{path.name}: panel {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel.get("description", "").strip(), f"{where} needs a description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where} needs a unit"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, where
        assert panel["targets"], f"{where} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
                # Short windows must follow the scrape interval; fixed ones only for "last hour" totals.
                assert window in ("$__rate_interval", "1h"), f"{where}: [{window}]: use [$__rate_interval]"


def test_every_query_carries_its_dashboards_filters() -> None:
    """Every selector of a panel query filters by the dashboard's variables (generate.py's Scope), so a panel
    never shows other namespaces, Tunnels or pods than the ones picked at the top."""
    source = dashboard_source()
    assert set(source.DASHBOARD_SCOPES) == set(source.DASHBOARDS)
    for name, scope in source.DASHBOARD_SCOPES.items():
        board = load_dashboard(DASHBOARD_DIR / f"mproxy-{name}.json")
        variables = [v["name"] for v in board["templating"]["list"] if v["type"] == "query"]
        assert variables == list(scope.labels), f"{name}: the variables are the scope's labels, in order"
        for panel in iter_panels(board):
            for target in panel.get("targets", []):
                matchers = re.findall(r"\{[^}]*\}", target["expr"])
                assert matchers, f"{name}: {panel['title']!r}: no selector in {target['expr']}"
                for matcher in matchers:
                    assert scope.selector() in matcher, f"{name}: {panel['title']!r}: {matcher} is unfiltered"


def test_dashboard_titles_are_unique_within_a_dashboard() -> None:
    for path in dashboard_files():
        titles = [p["title"] for p in iter_panels(load_dashboard(path)) if p["type"] != "row"]
        assert len(titles) == len(set(titles)), path.name


def test_core_panels_exist() -> None:
    present = {(t.dashboard, t.panel) for t in TARGETS}
    assert present >= CORE.keys(), f"core panels renamed or removed: {sorted(CORE.keys() - present)}"
