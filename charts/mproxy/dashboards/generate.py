"""Source of the Grafana dashboards shipped in this directory (charts/mproxy/dashboards/*.json).

    python charts/mproxy/dashboards/generate.py     # rewrite the JSON files from this source

Built with grafana-foundation-sdk (Grafana's own typed models and builders, Apache-2.0; in the `test` extra,
`pip install -e '.[test]'`), so a panel option, enum value or query field Grafana does not know cannot be
written. The JSON files are committed (the chart ships them as they are); tests/prometheus/test_dashboards.py
fails when they drift from this source and checks their conventions, test_live.py runs every query against a
real Prometheus. Conventions (kubernetes-mixin's): stable uids, a `datasource` variable, `$__rate_interval`,
a unit and a description on every panel.

It lives in the chart, not in the mproxy package, because it is part of the chart (its output ships there)
and never runs in the image, which does not install the SDK; .helmignore keeps it out of packaged charts.
SCOPES are the label filters of each role; test_rules.py checks the alert rules group by the same labels.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    prometheus,
    stat,
    statetimeline,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import units
from grafana_foundation_sdk.models.prometheus import QueryEditorMode

OUT_DIR = Path(__file__).resolve().parent
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RI = "$__rate_interval"
# The panel units, from the SDK's list of Grafana's unit ids.
NONE, SEC, OPS, BPS = units.NoUnit, units.Seconds, units.OpsPerSecond, units.BytesPerSecondSI
RATIO, BYTES = units.PercentUnit, units.BytesIEC  # RATIO: 0.0-1.0 shown as a percentage


@dataclass(frozen=True)
class Scope:
    """The labels a role's series are told apart by, outermost first. Each becomes a dashboard variable,
    filtered by the ones before it; an alert on the role aggregates by a prefix of them (test_rules.py).
    `tunnel` is the Tunnel a sidecar pod belongs to: the chart's PodMonitor copies the pod label
    mproxy.dev/tunnel.
    """

    labels: tuple[str, ...]

    def selector(self, first: int | None = None) -> str:
        """Regex matchers on the (multi-value) variables of the `first` outermost labels."""
        return ", ".join(f'{name}=~"${name}"' for name in self.labels[:first])

    def variables(self, metric: str) -> list[dashboard.QueryVariable]:
        return [_variable(name, metric, self.selector(i)) for i, name in enumerate(self.labels)]


SIDECAR = Scope(("namespace", "tunnel", "pod"))
EDGE = Scope(("namespace", "pod"))
OPERATOR = Scope(("namespace", "pod"))
SCOPES = {"sidecar": SIDECAR, "edge": EDGE, "operator": OPERATOR}  # by alert file (charts/mproxy/alerts/)
SC, ED, OP = SIDECAR.selector(), EDGE.selector(), OPERATOR.selector()


Kind = Literal["timeseries", "stat", "state-timeline", "bargauge"]


@dataclass
class Panel:
    title: str
    description: str
    unit: str
    exprs: list[tuple[str, str]]  # (expr, legend)
    kind: Kind = "timeseries"
    width: int = 12
    height: int = 8
    stack: bool = False
    mappings: list[dm.ValueMap] = field(default_factory=list)
    decimals: int | None = None
    max: float | None = None


@dataclass
class Row:
    title: str
    panels: list[Panel]


def _variable(name: str, metric: str, selector: str) -> dashboard.QueryVariable:
    query = f"label_values({metric}{{{selector}}}, {name})" if selector else f"label_values({metric}, {name})"
    return (
        dashboard.QueryVariable(name).label(name.capitalize()).datasource(DS)
        .query({"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True).multi(True).all_value(".*")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .options([]).regex("").sort(dm.VariableSort.ALPHABETICAL_ASC).hide(dm.VariableHide.DONT_HIDE)
    )


def _datasource_variable() -> dashboard.DatasourceVariable:
    return (
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        .current(dm.VariableOption(selected=False, text="default", value="default"))
        .regex("").hide(dm.VariableHide.DONT_HIDE).include_all(False).multi(False)
    )


def _custom_variable(name: str, label: str, values: list[str], default: str) -> dashboard.CustomVariable:
    return (
        dashboard.CustomVariable(name).label(label).values(",".join(values))
        .current(dm.VariableOption(selected=True, text=default, value=default))
        .options([dm.VariableOption(selected=v == default, text=v, value=v) for v in values])
        .hide(dm.VariableHide.DONT_HIDE).include_all(False).multi(False)
    )


def _target(expr: str, legend: str, ref_id: str, instant: bool) -> prometheus.Dataquery:
    query = (
        prometheus.Dataquery().datasource(DS).expr(expr).legend_format(legend).ref_id(ref_id)
        .editor_mode(QueryEditorMode.CODE)
    )
    return query.instant() if instant else query.range()


def _timeseries(panel: Panel) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .draw_style(cm.GraphDrawStyle.LINE).line_width(1).fill_opacity(20 if panel.stack else 10)
        .show_points(cm.VisibilityMode.NEVER).span_nulls(False)
        .stacking(common.StackingConfig()
                  .mode(cm.StackingMode.NORMAL if panel.stack else cm.StackingMode.NONE).group("A"))
        .legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                .placement(cm.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"]))
        .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )


def _last_value() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def _stat(panel: Panel) -> stat.Panel:
    return (
        stat.Panel().reduce_options(_last_value())
        .color_mode(cm.BigValueColorMode.VALUE).graph_mode(cm.BigValueGraphMode.AREA)
        .justify_mode(cm.BigValueJustifyMode.AUTO).text_mode(cm.BigValueTextMode.AUTO)
        .orientation(cm.VizOrientation.AUTO)
    )


def _state_timeline(panel: Panel) -> statetimeline.Panel:
    return (
        statetimeline.Panel().fill_opacity(80).line_width(0)
        .merge_values(True).show_value(cm.VisibilityMode.NEVER).align_value(cm.TimelineValueAlignment.LEFT)
        .row_height(0.9)
        .legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
        .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE).sort(cm.SortOrder.NONE))
    )


def _bargauge(panel: Panel) -> bargauge.Panel:
    return (
        bargauge.Panel().reduce_options(_last_value()).orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT).show_unfilled(True)
    )


PanelBuilder = timeseries.Panel | stat.Panel | statetimeline.Panel | bargauge.Panel
KINDS: dict[Kind, Callable[[Panel], PanelBuilder]] = {
    "timeseries": _timeseries, "stat": _stat, "state-timeline": _state_timeline, "bargauge": _bargauge,
}


def _panel(panel: Panel, pid: int) -> PanelBuilder:
    built = (
        KINDS[panel.kind](panel).id(pid).title(panel.title).description(panel.description).datasource(DS)
        .span(panel.width).height(panel.height).unit(panel.unit).mappings(list(panel.mappings))
    )
    if panel.decimals is not None:
        built = built.decimals(panel.decimals)
    if panel.max is not None:
        built = built.max(panel.max)
    # A bar gauge shows one value per series: an instant query keeps topk() to k bars.
    instant = panel.kind == "bargauge"
    for i, (expr, legend) in enumerate(panel.exprs):
        built = built.with_target(_target(expr, legend, chr(ord("A") + i), instant))
    return built


def _dashboard(uid: str, title: str, description: str, rows: list[Row],
               variables: list[cogbuilder.Builder[dm.VariableModel]]) -> dm.Dashboard:
    board = (
        dashboard.Dashboard(title).uid(uid).description(description).tags(["mproxy"]).editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR).version(1).refresh("30s").time("now-1h", "now")
        .timezone("").fiscal_year_start_month(0).live_now(False).week_start("")
        .link(dashboard.DashboardLink("mproxy dashboards").type(dm.DashboardLinkType.DASHBOARDS)
              .tags(["mproxy"]).as_dropdown(True).include_vars(True).keep_time(True))
        .annotation(dashboard.AnnotationQuery().built_in(1)
                    .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                    .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)")
                    .name("Annotations & Alerts").type("dashboard"))
        .variables([_datasource_variable(), *variables])
    )
    pid = 1
    # Rows stay expanded: their panels follow them on the dashboard (Grafana drops panels nested in an
    # expanded row). The builder lays them out left to right and starts a new line once the widths add
    # up to 24; test_dashboards.py checks that no panel sticks out.
    for row in rows:
        board = board.with_row(dashboard.Row(row.title).id(pid).collapsed(False))
        pid += 1
        for panel in row.panels:
            board = board.with_panel(_panel(panel, pid))
            pid += 1
    return board.build()


def _value_map(states: dict[str, tuple[str, str]]) -> dm.ValueMap:
    """A value mapping: value -> (text, color), in order."""
    return dm.ValueMap(options={
        value: dm.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, (text, color)) in enumerate(states.items())
    })


CONNECTED = [_value_map({"0": ("disconnected", "red"), "1": ("connected", "green")})]
ACTIVITY = [
    _value_map({"0": ("disconnected", "red"), "1": ("idle", "blue"), "2": ("carrying streams", "green")}),
]


def _quantiles(metric: str, sel: str, by: str = "") -> list[tuple[str, str]]:
    """p50 and p99 of a histogram, optionally per `by` label."""
    group = f"{by}, le" if by else "le"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{RI}])))", f"{legend}p{p}")
        for q, p in (("0.5", "50"), ("0.99", "99"))
    ]


def tunnels() -> dm.Dashboard:
    s = "mproxy_sidecar_"
    per_tunnel = "namespace, pod, edge, connection"
    rows = [
        Row("Tunnel state", [
            Panel("Connected sidecars", "Sidecars with at least one connected tunnel, out of all sidecars "
                  "scraped.", NONE, [
                      (f"sum(max by (namespace, pod) ({s}tunnel_connected{{{SC}}}))", "connected"),
                      (f"count(max by (namespace, pod) ({s}tunnel_connected{{{SC}}}))", "sidecars"),
                  ], kind="stat", width=6),
            Panel("Disconnected sidecars", "Sidecars with no connected tunnel right now: their pod gets no "
                  "public traffic through mproxy. MproxyTunnelDown fires after 5 minutes of this.", NONE, [
                      (f"count(max by (namespace, pod) ({s}tunnel_connected{{{SC}}}) == 0) or vector(0)",
                       "disconnected"),
                  ], kind="stat", width=6),
            Panel("Streams open now", "Client streams open through the selected sidecars now.", NONE, [
                (f"sum({s}tunnel_streams{{{SC}}})", "streams"),
            ], kind="stat", width=6),
            Panel("Reconnects (1h)", "Tunnel reconnects in the last hour, all reasons.", NONE, [
                (f"sum(increase({s}tunnel_reconnects_total{{{SC}}}[1h]))", "reconnects"),
            ], kind="stat", width=6, decimals=0),
            Panel("Connected pods per Tunnel", "Pods of each Tunnel with at least one connected tunnel "
                  "connection, next to all its pods scraped. Zero connected: the Tunnel's names are down "
                  "(MproxyTunnelUnavailable).", NONE, [
                      (f"sum by (namespace, tunnel) (max by (namespace, tunnel, pod) "
                       f"({s}tunnel_connected{{{SC}}}))", "{{namespace}}/{{tunnel}} connected"),
                      (f"count by (namespace, tunnel) (max by (namespace, tunnel, pod) "
                       f"({s}tunnel_connected{{{SC}}}))", "{{namespace}}/{{tunnel}} pods"),
                  ], width=24, decimals=0),
            Panel("Connected, per tunnel", "Connection state of each tunnel connection from a sidecar to an "
                  "edge (1 = connected, 0 = disconnected).", NONE, [
                      (f"max by ({per_tunnel}) ({s}tunnel_connected{{{SC}}})",
                       "{{namespace}}/{{pod}} {{edge}} #{{connection}}"),
                  ], kind="state-timeline", width=12, mappings=CONNECTED),
            Panel("Disconnected vs idle", "Tells a broken tunnel from a quiet one: disconnected (no "
                  "connection), idle (connected, no stream open), carrying streams (connected, streams "
                  "open). An idle tunnel is healthy.", NONE, [
                      (f"max by ({per_tunnel}) ({s}tunnel_connected{{{SC}}})"
                       f" * (1 + (max by ({per_tunnel}) ({s}tunnel_streams{{{SC}}}) > bool 0))",
                       "{{namespace}}/{{pod}} {{edge}} #{{connection}}"),
                  ], kind="state-timeline", width=12, mappings=ACTIVITY),
            Panel("Connected for", "Time since each tunnel connection last came up; a short time that keeps "
                  "resetting means flapping.", SEC, [
                      (f"(time() - max by ({per_tunnel}) "
                       f"({s}tunnel_last_connected_timestamp_seconds{{{SC}}}))"
                       f" * (max by ({per_tunnel}) ({s}tunnel_connected{{{SC}}}) > 0)",
                       "{{namespace}}/{{pod}} {{edge}} #{{connection}}"),
                  ]),
            Panel("Reconnects by reason", "Rate of tunnel reconnects, by the reason the previous connection "
                  "ended. The MproxyTunnelFlapping runbook explains each reason.", OPS, [
                      (f"sum by (reason) (rate({s}tunnel_reconnects_total{{{SC}}}[{RI}]))", "{{reason}}"),
                  ], stack=True),
            Panel("Edges missing, per sidecar", "Edge replicas announced for each edge URL minus the "
                  "distinct edges the sidecar holds a tunnel to. Above 0, clients landing on the missing "
                  "replicas get no tunnel from this pod (MproxyTunnelEdgeMissing).", NONE, [
                      (f"max by (namespace, pod, edge) ({s}edges_expected{{{SC}}})"
                       f" - max by (namespace, pod, edge) ({s}edges_connected{{{SC}}})",
                       "{{namespace}}/{{pod}} {{edge}}"),
                  ], width=24, decimals=0),
        ]),
        Row("Streams and bytes", [
            Panel("Streams open, per sidecar", "Client streams open now, per sidecar.", NONE, [
                (f"sum by (namespace, pod) ({s}tunnel_streams{{{SC}}})", "{{namespace}}/{{pod}}"),
            ]),
            Panel("Streams opened", "Rate of client streams routed to a backend, per sidecar.", OPS, [
                (f"sum by (namespace, pod) (rate({s}streams_opened_total{{{SC}}}[{RI}]))",
                 "{{namespace}}/{{pod}}"),
            ]),
            Panel("Bytes in / out", "Payload bytes per second: in = from clients to backends, out = from "
                  "backends to clients.", BPS, [
                      (f"sum(rate({s}received_bytes_total{{{SC}}}[{RI}]))", "in"),
                      (f"sum(rate({s}sent_bytes_total{{{SC}}}[{RI}]))", "out"),
                  ]),
            Panel("UDP datagrams and drops", "UDP datagrams per second relayed per route (in = from clients "
                  "to backends, out = back), and dropped by reason. UDP has no backpressure: a full queue, "
                  "an oversize datagram or a slow backend socket drops, never buffers.", OPS, [
                      (f"sum by (route, direction) (rate({s}udp_datagrams_total{{{SC}}}[{RI}]))",
                       "{{route}} {{direction}}"),
                      (f"sum by (reason) (rate({s}udp_dropped_total{{{SC}}}[{RI}])) > 0",
                       "dropped: {{reason}}"),
                  ]),
            Panel("Flow-control pauses", "Rate of flow-control pauses. relay: the sidecar asked the relay to "
                  "pause a client (slow backend); backend: the sidecar stopped reading a backend (slow "
                  "client, or the stream's tunnel queue is full). A paused stream waits instead of stalling "
                  "the tunnel's other streams.", OPS, [
                      (f"sum by (direction) (rate({s}pauses_total{{{SC}}}[{RI}]))", "{{direction}}"),
                  ], stack=True),
        ]),
        Row("Errors and latency", [
            Panel("Stream errors by reason", "Rate of streams that ended in an error, by reason.", OPS, [
                (f"sum by (reason) (rate({s}stream_errors_total{{{SC}}}[{RI}]))", "{{reason}}"),
            ], stack=True),
            Panel("Stream error ratio", "Share of opened streams that ended in an error, per sidecar. "
                  "MproxyBackendErrorsHigh fires above 5% for 10 minutes.", RATIO, [
                      (f"sum by (namespace, pod) (rate({s}stream_errors_total{{{SC}}}[{RI}]))"
                       f" / sum by (namespace, pod) (rate({s}streams_opened_total{{{SC}}}[{RI}]))",
                       "{{namespace}}/{{pod}}"),
                  ]),
            Panel("Streams refused by reason", "Rate of streams refused before reaching a backend, by "
                  "reason: no_route (no route matches and there is no default route), limit (streams per "
                  "tunnel or per client address), draining (after SIGTERM).", OPS, [
                      (f"sum by (reason) (rate({s}streams_refused_total{{{SC}}}[{RI}]))", "{{reason}}"),
                  ], stack=True),
            Panel("Backend connect latency", "Time for the sidecar to connect to the backend Service, p50 "
                  "and p99 (successful connects).", SEC,
                  _quantiles(f"{s}backend_connect_duration_seconds", SC)),
            Panel("Stream duration", "How long client streams last, open to close, p50 and p99.", SEC,
                  _quantiles(f"{s}stream_duration_seconds", SC)),
            Panel("Config reloads", "Rate of config file reloads, by result (refused: the new file was "
                  "invalid and the previous config stays).", OPS, [
                      (f"sum by (result) (rate({s}config_reloads_total{{{SC}}}[{RI}]))", "{{result}}"),
                  ]),
        ]),
    ]
    return _dashboard(
        "mproxy-tunnels", "mproxy / Tunnels",
        "Sidecar tunnels: connected or not, idle or busy, reconnects, streams, bytes, pauses, errors, "
        "backend latency.",
        rows, [
            *SIDECAR.variables(f"{s}tunnel_connected"),
        ],
    )


def clients() -> dm.Dashboard:
    s = "mproxy_sidecar_"
    rows = [
        Row("Per client (top k; the rest is client=\"other\")", [
            Panel("Bytes from clients", "Bytes per second received from each client, the $k busiest. The "
                  "sidecar labels at most maxClients clients (Tunnel spec.metrics.maxClients) and folds "
                  "the rest into client=\"other\", so the series count stays bounded.", BPS, [
                      (f"topk($k, sum by (client) (rate({s}received_bytes_total{{{SC}}}[{RI}])))",
                       "{{client}}"),
                  ]),
            Panel("Bytes to clients", "Bytes per second sent to each client, the $k busiest.", BPS, [
                (f"topk($k, sum by (client) (rate({s}sent_bytes_total{{{SC}}}[{RI}])))", "{{client}}"),
            ]),
            Panel("Streams per client", "New streams per second per client, the $k busiest.", OPS, [
                (f"topk($k, sum by (client) (rate({s}streams_opened_total{{{SC}}}[{RI}])))", "{{client}}"),
            ]),
            Panel("Open streams per client", "Streams open now per client, the $k biggest.", NONE, [
                (f"topk($k, sum by (client) ({s}streams_active{{{SC}}}))", "{{client}}"),
            ]),
            Panel("Errors per client", "Stream errors per second per client, the $k worst.", OPS, [
                (f"topk($k, sum by (client) (rate({s}stream_errors_total{{{SC}}}[{RI}])))", "{{client}}"),
            ]),
            Panel("Top clients by bytes (1h)", "Bytes exchanged with each client over the last hour (both "
                  "directions), the $k biggest.", BYTES, [
                      (f"topk($k, sum by (client) (increase({s}received_bytes_total{{{SC}}}[1h]))"
                       f" + sum by (client) (increase({s}sent_bytes_total{{{SC}}}[1h])))", "{{client}}"),
                  ], kind="bargauge"),
        ]),
        Row("Cardinality guard", [
            Panel("Share of bytes in \"other\"", "Fraction of bytes from clients not labelled individually. "
                  "If it grows, raise the Tunnel's spec.metrics.maxClients (more series) or accept it.",
                  RATIO, [
                      (f"sum(rate({s}received_bytes_total{{client=\"other\", {SC}}}[{RI}]))"
                       f" / sum(rate({s}received_bytes_total{{{SC}}}[{RI}]))", "other"),
                  ], max=1),
            Panel("Clients tracked", "Client label values each sidecar tracks now (at most maxClients), and "
                  "how often it evicts one into \"other\".", NONE, [
                      (f"sum by (namespace, pod) ({s}metrics_clients{{{SC}}})",
                       "{{namespace}}/{{pod}} tracked"),
                      (f"sum by (namespace, pod) (rate({s}metrics_client_evictions_total{{{SC}}}[{RI}]))",
                       "{{namespace}}/{{pod}} evictions/s"),
                  ]),
        ]),
        Row("Per route", [
            Panel("Streams per route", "New streams per second per route of the Tunnel.", OPS, [
                (f"sum by (route) (rate({s}streams_opened_total{{{SC}}}[{RI}]))", "{{route}}"),
            ], stack=True),
            Panel("Bytes per route", "Payload bytes per second per route, in (from clients) and out (to "
                  "clients).", BPS, [
                      (f"sum by (route) (rate({s}received_bytes_total{{{SC}}}[{RI}]))", "{{route}} in"),
                      (f"sum by (route) (rate({s}sent_bytes_total{{{SC}}}[{RI}]))", "{{route}} out"),
                  ]),
            Panel("Errors per route", "Stream errors per second per route and reason.", OPS, [
                (f"sum by (route, reason) (rate({s}stream_errors_total{{{SC}}}[{RI}]))",
                 "{{route}} {{reason}}"),
            ], stack=True),
            Panel("Backend connect latency per route", "Time to connect to each route's backend, p50 and "
                  "p99.", SEC, _quantiles(f"{s}backend_connect_duration_seconds", SC, "route")),
        ]),
    ]
    return _dashboard(
        "mproxy-clients", "mproxy / Clients",
        "Who uses the tunnels: bytes, streams and errors per client (bounded top-k with an \"other\" "
        "bucket) and per route.",
        rows, [
            *SIDECAR.variables(f"{s}tunnel_connected"),
            _custom_variable("k", "Top", ["5", "10", "20", "50"], "10"),
        ],
    )


def edge() -> dm.Dashboard:
    e = "mproxy_edge_"
    rows = [
        Row("Tunnels", [
            Panel("Tunnels connected", "Sidecar tunnels (WebSockets) connected to the selected edge pods.",
                  NONE, [
                      (f"sum({e}tunnels_connected{{{ED}}})", "tunnels"),
                  ], kind="stat", width=6),
            Panel("Names served", "Granted names with at least one tunnel behind them.", NONE, [
                (f"count(max by (name) ({e}name_tunnels{{{ED}}}) > 0) or vector(0)", "names"),
            ], kind="stat", width=6),
            Panel("Names without a tunnel", "Names that had tunnels and have none now: their clients are "
                  "turned away. MproxyEdgeNoTunnelForName fires after 5 minutes.", NONE, [
                      (f"count(max by (name) ({e}name_tunnels{{{ED}}}) == 0) or vector(0)", "names"),
                  ], kind="stat", width=6),
            Panel("Draining", "Edge pods draining before shutdown (they accept no new clients).", NONE, [
                (f"sum({e}draining{{{ED}}})", "draining"),
            ], kind="stat", width=6),
            Panel("Tunnels per name", "How many tunnels serve each name; the edge balances a name's clients "
                  "over them. Zero means its clients are turned away.", NONE, [
                      (f"sum by (name) ({e}name_tunnels{{{ED}}})", "{{name}}"),
                  ]),
            Panel("Tunnel connects and refusals", "Rate of tunnel WebSocket connections accepted, and of "
                  "tunnels or tokens refused by reason (bad signature, expired, no token...).", OPS, [
                      (f"sum(rate({e}tunnel_connects_total{{{ED}}}[{RI}]))", "accepted"),
                      (f"sum by (reason) (rate({e}tunnel_rejects_total{{{ED}}}[{RI}]))",
                       "refused: {{reason}}"),
                  ]),
        ]),
        Row("Clients", [
            Panel("Client connections by protocol and result", "Rate of client connections that ended, by "
                  "protocol (https, http, tcp) and result.", OPS, [
                      (f"sum by (protocol, result) (rate({e}client_connections_total{{{ED}}}[{RI}]))",
                       "{{protocol}} {{result}}"),
                  ], stack=True),
            Panel("Rejects by reason", "Rate of client connections the edge refused, by reason (no tunnel "
                  "for the name, rate limited, too many connections, sniff timeout...).", OPS, [
                      (f"sum by (reason) (rate({e}rejects_total{{{ED}}}[{RI}]))", "{{reason}}"),
                  ], stack=True),
            Panel("Forwarded between edges", "Rate of clients this edge had no tunnel for and forwarded to a "
                  "peer edge (out), and of clients peers forwarded here (in), by result. A steady out rate "
                  "means sidecars do not reach every replica; in: bad_auth, stale or replay is someone "
                  "other than a peer on the forward port.", OPS, [
                      (f"sum by (result) (rate({e}forwards_out_total{{{ED}}}[{RI}])) > 0", "out: {{result}}"),
                      (f"sum by (result) (rate({e}forwards_in_total{{{ED}}}[{RI}])) > 0", "in: {{result}}"),
                  ]),
            Panel("Peer edges", "Peer edges the selected pods find (this pod excluded) and whose grants "
                  "they fetched recently. Reachable below known: MproxyEdgePeerUnreachable after 10 "
                  "minutes.", NONE, [
                      (f"sum({e}peers_known{{{ED}}})", "known"),
                      (f"sum({e}peers_reachable{{{ED}}})", "reachable"),
                  ]),
            Panel("Client connections open", "Client connections open now, by protocol.", NONE, [
                (f"sum by (protocol) ({e}client_connections_active{{{ED}}})", "{{protocol}}"),
            ]),
            Panel("Client connection duration", "How long client connections stay open, p50 and p99.", SEC,
                  _quantiles(f"{e}client_connection_duration_seconds", ED)),
            Panel("Bytes in / out", "Payload bytes per second relayed: in = from clients to tunnels, out = "
                  "to clients.", BPS, [
                      (f"sum by (direction) (rate({e}bytes_total{{{ED}}}[{RI}]))", "{{direction}}"),
                  ]),
            Panel("UDP datagrams and drops", "UDP datagrams per second relayed per listener port (in = from "
                  "clients to tunnels, out = to clients), and dropped by reason (oversize, rate_limited, "
                  "queue_full, no_tunnel...): UDP is never buffered past a bound.", OPS, [
                      (f"sum by (port, direction) (rate({e}udp_datagrams_total{{{ED}}}[{RI}]))",
                       "{{port}} {{direction}}"),
                      (f"sum by (reason) (rate({e}udp_dropped_total{{{ED}}}[{RI}])) > 0",
                       "dropped: {{reason}}"),
                  ]),
            Panel("UDP clients", "UDP client streams (one per source address:port) open now, per listener "
                  "port; each ends after the listener's idleTimeoutSeconds of silence.", NONE, [
                      (f"sum by (port) ({e}udp_clients{{{ED}}})", "{{port}}"),
                  ]),
            Panel("Bytes per name", "Payload bytes per second per granted name (both directions), the 10 "
                  "busiest.", BPS, [
                      (f"topk(10, sum by (name) (rate({e}bytes_total{{{ED}}}[{RI}])))", "{{name}}"),
                  ]),
            Panel("Streams cut for buffering (E_BUFFER)", "Rate of client streams the edge cut because "
                  "their tunnel kept sending while the client was paused, by the limit passed (hard: "
                  "bufferHardBytes, soft: bufferSoftBytes after the grace, tunnel: tunnelBufferBytes). "
                  "Anything above zero is a sidecar ignoring pause or a burst larger than the limits.", OPS, [
                      (f"sum by (limit) (rate({e}buffer_cuts_total{{{ED}}}[{RI}]))", "{{limit}}"),
                  ]),
        ]),
    ]
    return _dashboard(
        "mproxy-edge", "mproxy / Edge",
        "The public edge relay: tunnels per name, client connections by protocol and result, rejects, bytes.",
        rows, [
            *EDGE.variables(f"{e}tunnels_connected"),
        ],
    )


def operator() -> dm.Dashboard:
    o = "mproxy_operator_"
    rows = [
        Row("Tunnels", [
            Panel("Tunnels ready", "Tunnels whose last reconciliation left them Ready.", NONE, [
                (f"sum(max by (namespace, pod) ({o}tunnels{{ready=\"true\", {OP}}}))", "ready"),
            ], kind="stat", width=8),
            Panel("Tunnels not ready", "Tunnels whose last reconciliation left them not Ready; their "
                  "status conditions say why (kubectl get tunnels -A).", NONE, [
                      (f"sum(max by (namespace, pod) ({o}tunnels{{ready=\"false\", {OP}}}))", "not ready"),
                  ], kind="stat", width=8),
            Panel("Workload rollouts (1h)", "Workloads the operator restarted in the last hour because "
                  "their sidecar changed or went away.", NONE, [
                      (f"sum(increase({o}workload_rollouts_total{{{OP}}}[1h]))", "rollouts"),
                  ], kind="stat", width=8, decimals=0),
        ]),
        Row("Reconciliation", [
            Panel("Reconciles", "Rate of Tunnel reconciliations, by trigger (change, timer, service, "
                  "connector) and result.", OPS, [
                      (f"sum by (trigger, result) (rate({o}reconciles_total{{{OP}}}[{RI}]))",
                       "{{trigger}} {{result}}"),
                  ], stack=True),
            Panel("Reconcile errors", "Rate of failed reconciliations (API errors, retried), by trigger. "
                  "MproxyOperatorReconcileErrors fires when they persist for 15 minutes.", OPS, [
                      (f"sum by (trigger) (rate({o}reconcile_errors_total{{{OP}}}[{RI}]))", "{{trigger}}"),
                  ], stack=True),
            Panel("Reconcile duration", "Time to reconcile one Tunnel, p50 and p99.", SEC, [
                (f"histogram_quantile(0.5, sum by (le) "
                 f"(rate({o}reconcile_duration_seconds_bucket{{{OP}}}[{RI}])))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) "
                 f"(rate({o}reconcile_duration_seconds_bucket{{{OP}}}[{RI}])))", "p99"),
            ], width=24),
        ]),
        Row("Admission webhook", [
            Panel("Webhook latency", "Latency of the sidecar-injection webhook, request to response, p50 "
                  "and p99. Pod creation waits on it; MproxyWebhookLatencyHigh fires when p99 stays above "
                  "1s.", SEC, [
                      (f"histogram_quantile(0.5, sum by (le) "
                       f"(rate({o}webhook_duration_seconds_bucket{{{OP}}}[{RI}])))", "p50"),
                      (f"histogram_quantile(0.99, sum by (le) "
                       f"(rate({o}webhook_duration_seconds_bucket{{{OP}}}[{RI}])))", "p99"),
                  ]),
            Panel("Webhook requests", "Rate of admission reviews answered, by result.", OPS, [
                (f"sum by (result) (rate({o}webhook_duration_seconds_count{{{OP}}}[{RI}]))", "{{result}}"),
            ], stack=True),
            Panel("Injections by outcome", "Pod admissions by outcome: injected, skipped (already injected "
                  "or no Tunnel selects the pod), refused; dry runs apart.", OPS, [
                      (f"sum by (outcome, dry_run) (rate({o}injections_total{{{OP}}}[{RI}]))",
                       "{{outcome}} (dry run {{dry_run}})"),
                  ], width=24, stack=True),
        ]),
        # process_* carry no mproxy prefix: `and` keeps only the pods that expose the operator's own metrics.
        Row("Resources", [
            Panel("Operator CPU", "CPU used by each operator pod, as a share of one core.", RATIO, [
                (f"sum by (namespace, pod) (rate(process_cpu_seconds_total{{{OP}}}[{RI}]))"
                 f" and on (namespace, pod) max by (namespace, pod) ({o}tunnels{{{OP}}})",
                 "{{namespace}}/{{pod}}"),
            ]),
            Panel("Operator memory", "Resident memory of each operator pod.", BYTES, [
                (f"sum by (namespace, pod) (process_resident_memory_bytes{{{OP}}})"
                 f" and on (namespace, pod) max by (namespace, pod) ({o}tunnels{{{OP}}})",
                 "{{namespace}}/{{pod}}"),
            ]),
        ]),
    ]
    return _dashboard(
        "mproxy-operator", "mproxy / Operator",
        "The mproxy operator: Tunnel readiness, reconciliations and their errors, the sidecar-injection "
        "webhook's latency and outcomes, CPU and memory.",
        rows, [
            *OPERATOR.variables(f"{o}tunnels"),
        ],
    )


DASHBOARDS: dict[str, Callable[[], dm.Dashboard]] = {
    "tunnels": tunnels, "clients": clients, "edge": edge, "operator": operator,
}
# Whose series each dashboard shows: every matcher of its panel queries carries that scope's selector.
DASHBOARD_SCOPES = {"tunnels": SIDECAR, "clients": SIDECAR, "edge": EDGE, "operator": OPERATOR}


def render(build: Callable[[], dm.Dashboard]) -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2) + "\n"


def main() -> int:
    for name, build in DASHBOARDS.items():
        path = OUT_DIR / f"mproxy-{name}.json"
        path.write_text(render(build))
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
