"""Source of the Grafana dashboards shipped in charts/mproxy/dashboards/.

    python -m tests.prometheus.build_dashboards      # rewrite the JSON files from this source

The JSON files are committed (the chart ships them as they are); test_dashboards.py fails when they drift
from this source and checks their conventions; test_live.py runs every query against a real Prometheus.
Conventions (kubernetes-mixin's): stable uids, a `datasource` variable, `$__rate_interval`, a unit and a
description on every panel.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parents[2] / "charts" / "mproxy" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"

# Filters every sidecar / edge / operator query carries (Grafana multi-value variables, regex matchers).
# `tunnel` is the Tunnel a sidecar pod belongs to (the chart's PodMonitor copies the mproxy.dev/tunnel label).
SC = 'namespace=~"$namespace", tunnel=~"$tunnel", pod=~"$pod"'
ED = 'namespace=~"$namespace", pod=~"$pod"'
OP = 'namespace=~"$namespace", pod=~"$pod"'


@dataclass
class Panel:
    title: str
    description: str
    unit: str
    exprs: list[tuple[str, str]]  # (expr, legend)
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    stack: bool = False
    mappings: list[dict[str, Any]] = field(default_factory=list)
    decimals: int | None = None
    max: float | None = None


@dataclass
class Row:
    title: str
    panels: list[Panel]


def _variable(name: str, label: str, metric: str, selector: str = "") -> dict[str, Any]:
    query = f"label_values({metric}{{{selector}}}, {name})" if selector else f"label_values({metric}, {name})"
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [], "regex": "", "sort": 1, "hide": 0,
    }


def _datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
        "current": {"selected": False, "text": "default", "value": "default"},
        "options": [], "regex": "", "refresh": 1, "hide": 0, "includeAll": False, "multi": False,
    }


def _custom_variable(name: str, label: str, values: list[str], default: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "custom", "query": ",".join(values),
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": v == default, "text": v, "value": v} for v in values],
        "hide": 0, "includeAll": False, "multi": False,
    }


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "mappings": panel.mappings}
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.max is not None:
        defaults["max"] = panel.max
    options: dict[str, Any]
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if panel.stack else 10,
            "showPoints": "never", "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        options = {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                       "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto",
            "orientation": "auto",
        }
    elif panel.kind == "state-timeline":
        defaults["custom"] = {"fillOpacity": 80, "lineWidth": 0}
        options = {
            "mergeValues": True, "showValue": "never", "alignValue": "left", "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"},
        }
    elif panel.kind == "bargauge":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
        }
    else:
        raise ValueError(f"unknown panel kind {panel.kind}")
    return {
        "id": pid, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DS, "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
        "targets": [
            {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i),
             # A bar gauge shows one value per series: an instant query keeps topk() to k bars.
             "range": panel.kind != "bargauge", "instant": panel.kind == "bargauge", "editorMode": "code"}
            for i, (expr, legend) in enumerate(panel.exprs)
        ],
    }


def dashboard(uid: str, title: str, description: str, rows: list[Row],
              variables: list[dict[str, Any]]) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in rows:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, row_h = 0, y + row_h, 0
            panels.append(_panel_json(panel, pid, x, y))
            pid, x, row_h = pid + 1, x + panel.width, max(row_h, panel.height)
        y += row_h
    return {
        "uid": uid, "title": title, "description": description, "tags": ["mproxy"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"}, "timepicker": {}, "timezone": "", "fiscalYearStartMonth": 0,
        "liveNow": False, "weekStart": "", "links": [
            {"title": "mproxy dashboards", "type": "dashboards", "tags": ["mproxy"], "asDropdown": True,
             "includeVars": True, "keepTime": True},
        ],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "templating": {"list": [_datasource_variable(), *variables]},
        "panels": panels,
    }


CONNECTED = [
    {"type": "value", "options": {
        "0": {"text": "disconnected", "color": "red", "index": 0},
        "1": {"text": "connected", "color": "green", "index": 1},
    }},
]
ACTIVITY = [
    {"type": "value", "options": {
        "0": {"text": "disconnected", "color": "red", "index": 0},
        "1": {"text": "idle", "color": "blue", "index": 1},
        "2": {"text": "carrying streams", "color": "green", "index": 2},
    }},
]


def _quantiles(metric: str, sel: str, by: str = "") -> list[tuple[str, str]]:
    """p50 and p99 of a histogram, optionally per `by` label."""
    group = f"{by}, le" if by else "le"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RI}])))", f"{legend}p{p}")
        for q, p in (("0.5", "50"), ("0.99", "99"))
    ]


def tunnels() -> dict[str, Any]:
    s = "mproxy_sidecar_"
    per_tunnel = "namespace, pod, edge, connection"
    rows = [
        Row("Tunnel state", [
            Panel("Connected sidecars", "Sidecars with at least one connected tunnel, out of all sidecars "
                  "scraped.", "none", [
                      (f"sum(max by (namespace, pod) ({s}tunnel_connected{{{SC}}}))", "connected"),
                      (f"count(max by (namespace, pod) ({s}tunnel_connected{{{SC}}}))", "sidecars"),
                  ], kind="stat", width=6),
            Panel("Disconnected sidecars", "Sidecars with no connected tunnel right now: their pod gets no "
                  "public traffic through mproxy. MproxyTunnelDown fires after 5 minutes of this.", "none", [
                      (f"count(max by (namespace, pod) ({s}tunnel_connected{{{SC}}}) == 0) or vector(0)",
                       "disconnected"),
                  ], kind="stat", width=6),
            Panel("Streams open now", "Client streams open through the selected sidecars now.", "none", [
                (f"sum({s}tunnel_streams{{{SC}}})", "streams"),
            ], kind="stat", width=6),
            Panel("Reconnects (1h)", "Tunnel reconnects in the last hour, all reasons.", "none", [
                (f"sum(increase({s}tunnel_reconnects_total{{{SC}}}[1h]))", "reconnects"),
            ], kind="stat", width=6, decimals=0),
            Panel("Connected pods per Tunnel", "Pods of each Tunnel with at least one connected tunnel "
                  "connection, next to all its pods scraped. Zero connected: the Tunnel's names are down "
                  "(MproxyTunnelUnavailable).", "none", [
                      (f"sum by (namespace, tunnel) (max by (namespace, tunnel, pod) "
                       f"({s}tunnel_connected{{{SC}}}))", "{{namespace}}/{{tunnel}} connected"),
                      (f"count by (namespace, tunnel) (max by (namespace, tunnel, pod) "
                       f"({s}tunnel_connected{{{SC}}}))", "{{namespace}}/{{tunnel}} pods"),
                  ], width=24, decimals=0),
            Panel("Connected, per tunnel", "Connection state of each tunnel connection from a sidecar to an "
                  "edge (1 = connected, 0 = disconnected).", "none", [
                      (f"max by ({per_tunnel}) ({s}tunnel_connected{{{SC}}})",
                       "{{namespace}}/{{pod}} {{edge}} #{{connection}}"),
                  ], kind="state-timeline", width=12, mappings=CONNECTED),
            Panel("Disconnected vs idle", "Tells a broken tunnel from a quiet one: disconnected (no "
                  "connection), idle (connected, no stream open), carrying streams (connected, streams "
                  "open). An idle tunnel is healthy.", "none", [
                      (f"max by ({per_tunnel}) ({s}tunnel_connected{{{SC}}})"
                       f" * (1 + (max by ({per_tunnel}) ({s}tunnel_streams{{{SC}}}) > bool 0))",
                       "{{namespace}}/{{pod}} {{edge}} #{{connection}}"),
                  ], kind="state-timeline", width=12, mappings=ACTIVITY),
            Panel("Connected for", "Time since each tunnel connection last came up; a short time that keeps "
                  "resetting means flapping.", "s", [
                      (f"(time() - max by ({per_tunnel}) "
                       f"({s}tunnel_last_connected_timestamp_seconds{{{SC}}}))"
                       f" * (max by ({per_tunnel}) ({s}tunnel_connected{{{SC}}}) > 0)",
                       "{{namespace}}/{{pod}} {{edge}} #{{connection}}"),
                  ]),
            Panel("Reconnects by reason", "Rate of tunnel reconnects, by the reason the previous connection "
                  "ended. The MproxyTunnelFlapping runbook explains each reason.", "ops", [
                      (f"sum by (reason) (rate({s}tunnel_reconnects_total{{{SC}}}[{RI}]))", "{{reason}}"),
                  ], stack=True),
        ]),
        Row("Streams and bytes", [
            Panel("Streams open, per sidecar", "Client streams open now, per sidecar.", "none", [
                (f"sum by (namespace, pod) ({s}tunnel_streams{{{SC}}})", "{{namespace}}/{{pod}}"),
            ]),
            Panel("Streams opened", "Rate of client streams routed to a backend, per sidecar.", "ops", [
                (f"sum by (namespace, pod) (rate({s}streams_opened_total{{{SC}}}[{RI}]))",
                 "{{namespace}}/{{pod}}"),
            ]),
            Panel("Bytes in / out", "Payload bytes per second: in = from clients to backends, out = from "
                  "backends to clients.", "Bps", [
                      (f"sum(rate({s}received_bytes_total{{{SC}}}[{RI}]))", "in"),
                      (f"sum(rate({s}sent_bytes_total{{{SC}}}[{RI}]))", "out"),
                  ]),
            Panel("Flow-control pauses", "Rate of flow-control pauses. relay: the sidecar asked the relay to "
                  "pause a client (slow backend); backend: the sidecar stopped reading a backend (slow "
                  "client, or the stream's tunnel queue is full). A paused stream waits instead of stalling "
                  "the tunnel's other streams.", "ops", [
                      (f"sum by (direction) (rate({s}pauses_total{{{SC}}}[{RI}]))", "{{direction}}"),
                  ], stack=True),
        ]),
        Row("Errors and latency", [
            Panel("Stream errors by reason", "Rate of streams that ended in an error, by reason.", "ops", [
                (f"sum by (reason) (rate({s}stream_errors_total{{{SC}}}[{RI}]))", "{{reason}}"),
            ], stack=True),
            Panel("Stream error ratio", "Share of opened streams that ended in an error, per sidecar. "
                  "MproxyBackendErrorsHigh fires above 5% for 10 minutes.", "percentunit", [
                      (f"sum by (namespace, pod) (rate({s}stream_errors_total{{{SC}}}[{RI}]))"
                       f" / sum by (namespace, pod) (rate({s}streams_opened_total{{{SC}}}[{RI}]))",
                       "{{namespace}}/{{pod}}"),
                  ]),
            Panel("Streams refused by reason", "Rate of streams refused before reaching a backend, by "
                  "reason: no_route (no route matches and there is no default route), limit (streams per "
                  "tunnel or per client address), draining (after SIGTERM).", "ops", [
                      (f"sum by (reason) (rate({s}streams_refused_total{{{SC}}}[{RI}]))", "{{reason}}"),
                  ], stack=True),
            Panel("Backend connect latency", "Time for the sidecar to connect to the backend Service, p50 "
                  "and p99 (successful connects).", "s",
                  _quantiles(f"{s}backend_connect_duration_seconds", SC)),
            Panel("Stream duration", "How long client streams last, open to close, p50 and p99.", "s",
                  _quantiles(f"{s}stream_duration_seconds", SC)),
            Panel("Config reloads", "Rate of config file reloads, by result (refused: the new file was "
                  "invalid and the previous config stays).", "ops", [
                      (f"sum by (result) (rate({s}config_reloads_total{{{SC}}}[{RI}]))", "{{result}}"),
                  ]),
        ]),
    ]
    return dashboard(
        "mproxy-tunnels", "mproxy / Tunnels",
        "Sidecar tunnels: connected or not, idle or busy, reconnects, streams, bytes, pauses, errors, "
        "backend latency.",
        rows, [
            _variable("namespace", "Namespace", f"{s}tunnel_connected"),
            _variable("tunnel", "Tunnel", f"{s}tunnel_connected", 'namespace=~"$namespace"'),
            _variable("pod", "Pod", f"{s}tunnel_connected", 'namespace=~"$namespace", tunnel=~"$tunnel"'),
        ],
    )


def clients() -> dict[str, Any]:
    s = "mproxy_sidecar_"
    rows = [
        Row("Per client (top k; the rest is client=\"other\")", [
            Panel("Bytes from clients", "Bytes per second received from each client, the $k busiest. The "
                  "sidecar labels at most maxClients clients (Tunnel spec.metrics.maxClients) and folds "
                  "the rest into client=\"other\", so the series count stays bounded.", "Bps", [
                      (f"topk($k, sum by (client) (rate({s}received_bytes_total{{{SC}}}[{RI}])))",
                       "{{client}}"),
                  ]),
            Panel("Bytes to clients", "Bytes per second sent to each client, the $k busiest.", "Bps", [
                (f"topk($k, sum by (client) (rate({s}sent_bytes_total{{{SC}}}[{RI}])))", "{{client}}"),
            ]),
            Panel("Streams per client", "New streams per second per client, the $k busiest.", "ops", [
                (f"topk($k, sum by (client) (rate({s}streams_opened_total{{{SC}}}[{RI}])))", "{{client}}"),
            ]),
            Panel("Open streams per client", "Streams open now per client, the $k biggest.", "none", [
                (f"topk($k, sum by (client) ({s}streams_active{{{SC}}}))", "{{client}}"),
            ]),
            Panel("Errors per client", "Stream errors per second per client, the $k worst.", "ops", [
                (f"topk($k, sum by (client) (rate({s}stream_errors_total{{{SC}}}[{RI}])))", "{{client}}"),
            ]),
            Panel("Top clients by bytes (1h)", "Bytes exchanged with each client over the last hour (both "
                  "directions), the $k biggest.", "bytes", [
                      (f"topk($k, sum by (client) (increase({s}received_bytes_total{{{SC}}}[1h]))"
                       f" + sum by (client) (increase({s}sent_bytes_total{{{SC}}}[1h])))", "{{client}}"),
                  ], kind="bargauge"),
        ]),
        Row("Cardinality guard", [
            Panel("Share of bytes in \"other\"", "Fraction of bytes from clients not labelled individually. "
                  "If it grows, raise the Tunnel's spec.metrics.maxClients (more series) or accept it.",
                  "percentunit", [
                      (f"sum(rate({s}received_bytes_total{{client=\"other\", {SC}}}[{RI}]))"
                       f" / sum(rate({s}received_bytes_total{{{SC}}}[{RI}]))", "other"),
                  ], max=1),
            Panel("Clients tracked", "Client label values each sidecar tracks now (at most maxClients), and "
                  "how often it evicts one into \"other\".", "none", [
                      (f"sum by (namespace, pod) ({s}metrics_clients{{{SC}}})",
                       "{{namespace}}/{{pod}} tracked"),
                      (f"sum by (namespace, pod) (rate({s}metrics_client_evictions_total{{{SC}}}[{RI}]))",
                       "{{namespace}}/{{pod}} evictions/s"),
                  ]),
        ]),
        Row("Per route", [
            Panel("Streams per route", "New streams per second per route of the Tunnel.", "ops", [
                (f"sum by (route) (rate({s}streams_opened_total{{{SC}}}[{RI}]))", "{{route}}"),
            ], stack=True),
            Panel("Bytes per route", "Payload bytes per second per route, in (from clients) and out (to "
                  "clients).", "Bps", [
                      (f"sum by (route) (rate({s}received_bytes_total{{{SC}}}[{RI}]))", "{{route}} in"),
                      (f"sum by (route) (rate({s}sent_bytes_total{{{SC}}}[{RI}]))", "{{route}} out"),
                  ]),
            Panel("Errors per route", "Stream errors per second per route and reason.", "ops", [
                (f"sum by (route, reason) (rate({s}stream_errors_total{{{SC}}}[{RI}]))",
                 "{{route}} {{reason}}"),
            ], stack=True),
            Panel("Backend connect latency per route", "Time to connect to each route's backend, p50 and "
                  "p99.", "s", _quantiles(f"{s}backend_connect_duration_seconds", SC, "route")),
        ]),
    ]
    return dashboard(
        "mproxy-clients", "mproxy / Clients",
        "Who uses the tunnels: bytes, streams and errors per client (bounded top-k with an \"other\" "
        "bucket) and per route.",
        rows, [
            _variable("namespace", "Namespace", f"{s}tunnel_connected"),
            _variable("tunnel", "Tunnel", f"{s}tunnel_connected", 'namespace=~"$namespace"'),
            _variable("pod", "Pod", f"{s}tunnel_connected", 'namespace=~"$namespace", tunnel=~"$tunnel"'),
            _custom_variable("k", "Top", ["5", "10", "20", "50"], "10"),
        ],
    )


def edge() -> dict[str, Any]:
    e = "mproxy_edge_"
    rows = [
        Row("Tunnels", [
            Panel("Tunnels connected", "Sidecar tunnels (WebSockets) connected to the selected edge pods.",
                  "none", [
                      (f"sum({e}tunnels_connected{{{ED}}})", "tunnels"),
                  ], kind="stat", width=6),
            Panel("Names served", "Granted names with at least one tunnel behind them.", "none", [
                (f"count(max by (name) ({e}name_tunnels{{{ED}}}) > 0) or vector(0)", "names"),
            ], kind="stat", width=6),
            Panel("Names without a tunnel", "Names that had tunnels and have none now: their clients are "
                  "turned away. MproxyEdgeNoTunnelForName fires after 5 minutes.", "none", [
                      (f"count(max by (name) ({e}name_tunnels{{{ED}}}) == 0) or vector(0)", "names"),
                  ], kind="stat", width=6),
            Panel("Draining", "Edge pods draining before shutdown (they accept no new clients).", "none", [
                (f"sum({e}draining{{{ED}}})", "draining"),
            ], kind="stat", width=6),
            Panel("Tunnels per name", "How many tunnels serve each name; the edge balances a name's clients "
                  "over them. Zero means its clients are turned away.", "none", [
                      (f"sum by (name) ({e}name_tunnels{{{ED}}})", "{{name}}"),
                  ]),
            Panel("Tunnel connects and refusals", "Rate of tunnel WebSocket connections accepted, and of "
                  "tunnels or tokens refused by reason (bad signature, expired, no token...).", "ops", [
                      (f"sum(rate({e}tunnel_connects_total{{{ED}}}[{RI}]))", "accepted"),
                      (f"sum by (reason) (rate({e}tunnel_rejects_total{{{ED}}}[{RI}]))",
                       "refused: {{reason}}"),
                  ]),
        ]),
        Row("Clients", [
            Panel("Client connections by protocol and result", "Rate of client connections that ended, by "
                  "protocol (https, http, tcp) and result.", "ops", [
                      (f"sum by (protocol, result) (rate({e}client_connections_total{{{ED}}}[{RI}]))",
                       "{{protocol}} {{result}}"),
                  ], stack=True),
            Panel("Rejects by reason", "Rate of client connections the edge refused, by reason (no tunnel "
                  "for the name, rate limited, too many connections, sniff timeout...).", "ops", [
                      (f"sum by (reason) (rate({e}rejects_total{{{ED}}}[{RI}]))", "{{reason}}"),
                  ], stack=True),
            Panel("Client connections open", "Client connections open now, by protocol.", "none", [
                (f"sum by (protocol) ({e}client_connections_active{{{ED}}})", "{{protocol}}"),
            ]),
            Panel("Client connection duration", "How long client connections stay open, p50 and p99.", "s",
                  _quantiles(f"{e}client_connection_duration_seconds", ED)),
            Panel("Bytes in / out", "Payload bytes per second relayed: in = from clients to tunnels, out = "
                  "to clients.", "Bps", [
                      (f"sum by (direction) (rate({e}bytes_total{{{ED}}}[{RI}]))", "{{direction}}"),
                  ]),
            Panel("Bytes per name", "Payload bytes per second per granted name (both directions), the 10 "
                  "busiest.", "Bps", [
                      (f"topk(10, sum by (name) (rate({e}bytes_total{{{ED}}}[{RI}])))", "{{name}}"),
                  ]),
        ]),
    ]
    return dashboard(
        "mproxy-edge", "mproxy / Edge",
        "The public edge relay: tunnels per name, client connections by protocol and result, rejects, bytes.",
        rows, [
            _variable("namespace", "Namespace", f"{e}tunnels_connected"),
            _variable("pod", "Pod", f"{e}tunnels_connected", 'namespace=~"$namespace"'),
        ],
    )


def operator() -> dict[str, Any]:
    o = "mproxy_operator_"
    rows = [
        Row("Tunnels", [
            Panel("Tunnels ready", "Tunnels whose last reconciliation left them Ready.", "none", [
                (f"sum(max by (namespace, pod) ({o}tunnels{{ready=\"true\", {OP}}}))", "ready"),
            ], kind="stat", width=8),
            Panel("Tunnels not ready", "Tunnels whose last reconciliation left them not Ready; their "
                  "status conditions say why (kubectl get tunnels -A).", "none", [
                      (f"sum(max by (namespace, pod) ({o}tunnels{{ready=\"false\", {OP}}}))", "not ready"),
                  ], kind="stat", width=8),
            Panel("Workload rollouts (1h)", "Workloads the operator restarted in the last hour because "
                  "their sidecar changed or went away.", "none", [
                      (f"sum(increase({o}workload_rollouts_total{{{OP}}}[1h]))", "rollouts"),
                  ], kind="stat", width=8, decimals=0),
        ]),
        Row("Reconciliation", [
            Panel("Reconciles", "Rate of Tunnel reconciliations, by trigger (change, timer, service, "
                  "gateway) and result.", "ops", [
                      (f"sum by (trigger, result) (rate({o}reconciles_total{{{OP}}}[{RI}]))",
                       "{{trigger}} {{result}}"),
                  ], stack=True),
            Panel("Reconcile errors", "Rate of failed reconciliations (API errors, retried), by trigger. "
                  "MproxyOperatorReconcileErrors fires when they persist for 15 minutes.", "ops", [
                      (f"sum by (trigger) (rate({o}reconcile_errors_total{{{OP}}}[{RI}]))", "{{trigger}}"),
                  ], stack=True),
            Panel("Reconcile duration", "Time to reconcile one Tunnel, p50 and p99.", "s", [
                (f"histogram_quantile(0.5, sum by (le) "
                 f"(rate({o}reconcile_duration_seconds_bucket{{{OP}}}[{RI}])))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) "
                 f"(rate({o}reconcile_duration_seconds_bucket{{{OP}}}[{RI}])))", "p99"),
            ], width=24),
        ]),
        Row("Admission webhook", [
            Panel("Webhook latency", "Latency of the sidecar-injection webhook, request to response, p50 "
                  "and p99. Pod creation waits on it; MproxyWebhookLatencyHigh fires when p99 stays above "
                  "1s.", "s", [
                      (f"histogram_quantile(0.5, sum by (le) "
                       f"(rate({o}webhook_duration_seconds_bucket{{{OP}}}[{RI}])))", "p50"),
                      (f"histogram_quantile(0.99, sum by (le) "
                       f"(rate({o}webhook_duration_seconds_bucket{{{OP}}}[{RI}])))", "p99"),
                  ]),
            Panel("Webhook requests", "Rate of admission reviews answered, by result.", "ops", [
                (f"sum by (result) (rate({o}webhook_duration_seconds_count{{{OP}}}[{RI}]))", "{{result}}"),
            ], stack=True),
            Panel("Injections by outcome", "Pod admissions by outcome: injected, skipped (already injected "
                  "or no Tunnel selects the pod), refused; dry runs apart.", "ops", [
                      (f"sum by (outcome, dry_run) (rate({o}injections_total{{{OP}}}[{RI}]))",
                       "{{outcome}} (dry run {{dry_run}})"),
                  ], width=24, stack=True),
        ]),
        # process_* carry no mproxy prefix: `and` keeps only the pods that expose the operator's own metrics.
        Row("Resources", [
            Panel("Operator CPU", "CPU used by each operator pod, as a share of one core.", "percentunit", [
                (f"sum by (namespace, pod) (rate(process_cpu_seconds_total{{{OP}}}[{RI}]))"
                 f" and on (namespace, pod) max by (namespace, pod) ({o}tunnels{{{OP}}})",
                 "{{namespace}}/{{pod}}"),
            ]),
            Panel("Operator memory", "Resident memory of each operator pod.", "bytes", [
                (f"sum by (namespace, pod) (process_resident_memory_bytes{{{OP}}})"
                 f" and on (namespace, pod) max by (namespace, pod) ({o}tunnels{{{OP}}})",
                 "{{namespace}}/{{pod}}"),
            ]),
        ]),
    ]
    return dashboard(
        "mproxy-operator", "mproxy / Operator",
        "The mproxy operator: Tunnel readiness, reconciliations and their errors, the sidecar-injection "
        "webhook's latency and outcomes, CPU and memory.",
        rows, [
            _variable("namespace", "Namespace", f"{o}tunnels"),
            _variable("pod", "Pod", f"{o}tunnels", 'namespace=~"$namespace"'),
        ],
    )


DASHBOARDS = {"tunnels": tunnels, "clients": clients, "edge": edge, "operator": operator}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        path = OUT_DIR / f"mproxy-{name}.json"
        path.write_text(render(build))
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
