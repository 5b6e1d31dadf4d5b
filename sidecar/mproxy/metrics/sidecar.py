"""The sidecar's Prometheus metrics, on a per-instance CollectorRegistry (see docs/metrics.md).

Label tiers (config `metrics.labels`): "off" = no route or client labels, "route" = a `route` label,
"client" = `route` and `client` (the client's address from the M-PROXY header, not its port), bounded by a
ClientGuard (at most `max_clients` values; evicted ones fold into client="other"). Histograms never carry the
client label. Byte counters are fed in batches (`StreamMeter.add_bytes` with deltas), not per chunk, so the
data path does not pay for them.
"""

from __future__ import annotations

import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mproxy.codec.errors import ErrorCode
from mproxy.metrics.guard import OTHER, ClientGuard, ClientSlot

__all__ = ["SidecarMetrics", "StreamMeter"]

P = "mproxy_sidecar_"

# Label values that come from the network are bounded to fixed sets (anything else folds into *_other), so a
# relay cannot grow our series: `client_<code>` takes the code of the relay's `error` frame (proxy-packer
# relays send E_* codes and node socket errors, telebit's Go relay similar), `backend_<code>` the errno of
# a failed backend connect.
CLIENT_ERROR_CODES = (
    ErrorCode.NO_CONN, ErrorCode.CLIENT, ErrorCode.ABORTED, ErrorCode.IDLE, ErrorCode.BUFFER,
    ErrorCode.LIMIT, ErrorCode.SHUTTING_DOWN, ErrorCode.INTERNAL, ErrorCode.UNKNOWN_ERR, ErrorCode.TIMEOUT,
    ErrorCode.CONN_CLOSED, ErrorCode.CONNREFUSED,
    "ECONNRESET", "EPIPE", "ETIMEDOUT", "ECONNABORTED", "EHOSTUNREACH", "ENETUNREACH", "EOF",
)
BACKEND_ERROR_CODES = (
    ErrorCode.CONNREFUSED, ErrorCode.BACKEND,
    "ETIMEDOUT", "ENOTFOUND", "EHOSTUNREACH", "ENETUNREACH", "ECONNRESET", "ECONNABORTED", "EADDRNOTAVAIL",
    "EACCES", "EPERM",
)
STREAM_ERROR_REASONS = frozenset((
    "client_error", "client_other", "backend_other", "backend_reset", "buffer_overflow", "idle",
    "tunnel_closed", "other",
    *("client_" + c.lower() for c in CLIENT_ERROR_CODES),
    *("backend_" + c.lower() for c in BACKEND_ERROR_CODES),
))
TUNNEL_DOWN_REASONS = frozenset(("peer_closed", "protocol_error", "dead_peer", "transport_error", "closed",
                                 "shutdown", "connect_failed", "handshake_failed", "auth_failed", "unknown",
                                 "overflow", "internal_error", "task_failed", "duplicate_edge"))
TASKS = ("tunnel", "flush", "config_watcher")  # the supervised long-lived tasks (see tunnel/supervisor.py)
REFUSAL_REASONS = frozenset(("no_route", "refused_backend", "limit", "draining", "e_no_service"))


def stream_error_reason(reason: str) -> str:
    """`reason` if it is a known stream error reason, else its family's `*_other`."""
    if reason in STREAM_ERROR_REASONS:
        return reason
    family = reason.split("_", 1)[0]
    return family + "_other" if family in ("client", "backend") else "other"


def bounded(reason: str, known: frozenset[str]) -> str:
    return reason if reason in known else "other"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400)


class SidecarMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, tier: str = "client",
                 max_clients: int = 200) -> None:
        if tier not in ("off", "route", "client"):
            raise ValueError(f"metrics label tier must be off, route or client (got {tier!r})")
        self.registry = registry or CollectorRegistry()
        self.tier = tier
        r = self.registry
        base: tuple[str, ...] = {"off": (), "route": ("route",), "client": ("route", "client")}[tier]
        hist_labels: tuple[str, ...] = () if tier == "off" else ("route",)
        self.streams_opened = Counter(P + "streams_opened", "Client streams opened (routed to a backend).",
                                      base, registry=r)
        self.streams_active = Gauge(P + "streams_active", "Client streams open now.", base, registry=r)
        self.received_bytes = Counter(P + "received_bytes", "Bytes from clients (through the tunnel) "
                                      "written to backends.", base, registry=r)
        self.sent_bytes = Counter(P + "sent_bytes", "Bytes from backends sent to clients through the tunnel.",
                                  base, registry=r)
        self.stream_errors = Counter(P + "stream_errors", "Streams that ended in an error, by reason.",
                                     (*base, "reason"), registry=r)
        self.pauses = Counter(
            P + "pauses",
            "Flow-control pauses; direction=relay: we asked the relay to pause a client (slow backend); "
            "direction=backend: the relay paused us (slow client).",
            (*base, "direction"), registry=r)
        self.connect_seconds = Histogram(P + "backend_connect_duration_seconds",
                                         "Time to connect to a backend (successful connects).", hist_labels,
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.stream_seconds = Histogram(P + "stream_duration_seconds", "Lifetime of client streams.",
                                        hist_labels, buckets=DURATION_BUCKETS, registry=r)
        self.refused = Counter(P + "streams_refused", "Streams refused before reaching a backend, by reason "
                               "(no_route, limit, draining, ...).", ("reason",), registry=r)
        self.client_evictions = Counter(P + "metrics_client_evictions",
                                        "Client label values evicted by the cardinality guard (folded into "
                                        'client="other").', registry=r)
        self.clients_tracked = Gauge(P + "metrics_clients", "Client label values currently tracked.",
                                     registry=r)
        self.tunnel_connected = Gauge(P + "tunnel_connected", "1 while this tunnel connection is up.",
                                      ("edge", "connection"), registry=r)
        self.tunnel_reconnects = Counter(P + "tunnel_reconnects", "Tunnel (re)connection attempts after a "
                                         "loss, by reason of the loss.", ("edge", "reason"), registry=r)
        self.tunnel_last_connected = Gauge(P + "tunnel_last_connected_timestamp_seconds",
                                           "Unix time this tunnel connection last came up.",
                                           ("edge", "connection"), registry=r)
        self.tunnel_streams = Gauge(P + "tunnel_streams", "Streams open in this tunnel connection.",
                                    ("edge", "connection"), registry=r)
        # Per edge URL: the replicas its edges announce vs the distinct edges this sidecar holds tunnels to.
        self.edges_expected = Gauge(P + "edges_expected", "Edge replicas announced for this edge URL.",
                                    ("edge",), registry=r)
        self.edges_connected = Gauge(P + "edges_connected", "Distinct edges this sidecar holds a tunnel to.",
                                     ("edge",), registry=r)
        self.config_reloads = Counter(P + "config_reloads", "Config file reloads, by result.", ("result",),
                                      registry=r)
        self.task_restarts = Counter(P + "task_restarts", "Long-lived tasks that failed and were restarted "
                                     "(tunnel, flush, config_watcher).", ("task",), registry=r)
        self.tasks_down = Gauge(P + "tasks_down", "Supervised tasks failed and waiting for their restart "
                                "(the sidecar is not ready meanwhile).", ("task",), registry=r)
        for task in TASKS:
            self.task_restarts.labels(task)
            self.tasks_down.labels(task)
        for reason in ("no_route", "refused_backend", "limit", "draining"):
            self.refused.labels(reason)
        for result in ("applied", "refused"):
            self.config_reloads.labels(result)
        self._counters: dict[str, Counter | Gauge] = {
            "streams_opened": self.streams_opened,
            "streams_active": self.streams_active,
            "received_bytes": self.received_bytes,
            "sent_bytes": self.sent_bytes,
            "stream_errors": self.stream_errors,
            "pauses": self.pauses,
        }
        # Children by (metric key, label values): `labels()` takes a lock and walks dicts on every call, and
        # each stream made several. _evict drops an evicted client's entries with its series, so a stale
        # child never resurrects a removed series. Bounded like the series: routes x live clients.
        self._children: dict[tuple[str, tuple[str, ...]], Counter | Gauge] = {}
        self._hists: dict[tuple[Histogram, str], Histogram] = {}
        self.guard = ClientGuard(max_clients, self._evict)

    # -- label plumbing ---------------------------------------------------------------------------

    def _labels(self, route: str, slot: ClientSlot | None, extra: tuple[str, ...]) -> tuple[str, ...]:
        if self.tier == "off":
            return extra
        if self.tier == "route":
            return (route, *extra)
        return (route, slot.label if slot else OTHER, *extra)

    def _add(
        self, key: str, route: str, slot: ClientSlot | None, amount: float, extra: tuple[str, ...] = ()
    ) -> None:
        labels = self._labels(route, slot, extra)
        child = self._children.get((key, labels))
        if child is None:
            metric = self._counters[key]
            child = self._children[(key, labels)] = metric.labels(*labels) if labels else metric
        child.inc(amount)
        if self.tier == "client" and slot is not None and slot.alive:
            k = (key, (route, *extra))
            slot.values[k] = slot.values.get(k, 0.0) + amount

    def _evict(self, slot: ClientSlot) -> None:
        self.client_evictions.inc()
        for (key, (route, *extra)), value in slot.values.items():
            metric = self._counters[key]
            self._children.pop((key, (route, slot.client, *extra)), None)
            with contextlib.suppress(KeyError):
                metric.remove(route, slot.client, *extra)
            if value:
                metric.labels(route, OTHER, *extra).inc(value)
        slot.values.clear()

    def client_slot(self, client: str) -> ClientSlot | None:
        if self.tier != "client":
            return None
        slot = self.guard.touch(client)
        self.clients_tracked.set(len(self.guard))
        return slot

    # -- API used by the role ---------------------------------------------------------------------

    def stream_opened(self, route: str, client: str) -> StreamMeter:
        slot = self.client_slot(client)
        self._add("streams_opened", route, slot, 1)
        self._add("streams_active", route, slot, 1)
        return StreamMeter(self, route, slot)

    def refuse(self, reason: str) -> None:
        self.refused.labels(bounded(reason, REFUSAL_REASONS)).inc()

    def _hist(self, metric: Histogram, route: str) -> Histogram:
        if self.tier == "off":
            return metric
        key = (metric, route)
        child = self._hists.get(key)
        if child is None:
            child = self._hists[key] = metric.labels(route)
        return child

    def observe_connect(self, route: str, seconds: float) -> None:
        self._hist(self.connect_seconds, route).observe(seconds)

    def tunnel_up(self, edge: str, connection: str) -> None:
        self.tunnel_connected.labels(edge, connection).set(1)
        self.tunnel_last_connected.labels(edge, connection).set(time.time())

    def edges(self, edge: str, expected: int, connected: int) -> None:
        self.edges_expected.labels(edge).set(expected)
        self.edges_connected.labels(edge).set(connected)

    def forget_edges(self, edge: str) -> None:
        """The URL left the config: its series go too."""
        for gauge in (self.edges_expected, self.edges_connected):
            with contextlib.suppress(KeyError):
                gauge.remove(edge)

    def tunnel_down(self, edge: str, connection: str, reason: str) -> None:
        self.tunnel_connected.labels(edge, connection).set(0)
        self.tunnel_streams.labels(edge, connection).set(0)
        self.tunnel_reconnects.labels(edge, bounded(reason, TUNNEL_DOWN_REASONS)).inc()


class StreamMeter:
    """The metrics of one stream; keeps its client slot so gauges come down where they went up."""

    __slots__ = ("_closed", "_m", "_route", "_slot", "opened")

    def __init__(self, metrics: SidecarMetrics, route: str, slot: ClientSlot | None) -> None:
        self._m = metrics
        self._route = route
        self._slot = slot
        self._closed = False
        self.opened = time.monotonic()

    def _touch(self) -> ClientSlot | None:
        slot = self._slot
        if slot is not None and slot.alive:
            self._m.guard.touch(slot.client)  # recently seen
        return slot

    def add_bytes(self, received: int, sent: int) -> None:
        slot = self._touch()
        if received:
            self._m._add("received_bytes", self._route, slot, received)
        if sent:
            self._m._add("sent_bytes", self._route, slot, sent)

    def error(self, reason: str) -> None:
        self._m._add("stream_errors", self._route, self._touch(), 1, (stream_error_reason(reason),))

    def pause(self, direction: str) -> None:
        self._m._add("pauses", self._route, self._touch(), 1, (direction,))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        m = self._m
        m._add("streams_active", self._route, self._slot, -1)
        m._hist(m.stream_seconds, self._route).observe(time.monotonic() - self.opened)
