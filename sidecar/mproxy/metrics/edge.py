"""Edge relay metrics (`mproxy_edge_*`), on a per-instance CollectorRegistry.

Cardinality is bounded by construction: the `name` label is never the raw SNI or Host a client sent
(anyone can send a million random names); it is the *granted* domain the client was routed to, which
only a token signed with the edge's secret can create, or "" when the client was not routed. A name whose
last tunnel left stays at 0 until MAX_NAMES forces it out. Reasons and protocols are fixed sets.

No label is called `service`, `namespace`, `pod`, `job`, `instance`, `container` or `endpoint`: those are
target labels Prometheus adds when it scrapes (a ServiceMonitor adds `service`), and a clash renames ours
to `exported_<label>`. The listener kind is therefore `protocol`.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PROTOCOLS = ("https", "http", "tcp")
CLIENT_RESULTS = ("ok", "rejected", "tunnel_closed", "error")
# Every reason the edge's code can give (listener, limits, relay; token checks); anything else is "other".
REJECT_REASONS = ("no_tunnel", "rate_limited", "too_many_connections", "too_many_clients", "sniff_timeout",
                  "no_name", "not_tls", "name_too_long", "tunnel_full", "draining", "bad_proxy_header",
                  "client_id_in_use", "overloaded")
TUNNEL_REJECT_REASONS = ("bad_signature", "expired", "not_yet_valid", "malformed", "bad_alg", "bad_claims",
                         "no_secret", "no_token", "too_many_tokens", "protocol_error", "too_many_tunnels",
                         "overflow", "internal_error", "duplicate_edge", "listener_groups_not_allowed",
                         "bad_listener_groups")
BUFFER_LIMITS = ("hard", "soft", "tunnel")  # mproxy.buffers.CUT_LIMITS: which rule cut a stream
TASKS = ("flusher", "tunnel_guard")  # the supervised long-lived tasks (see tunnel/supervisor.py)
MAX_NAMES = 10_000  # a backstop in case someone mints tokens for very many domains


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tunnels = Gauge("mproxy_edge_name_tunnels",
                             "Tunnels currently connected per granted name (0: its clients are turned away).",
                             ["name"], registry=r)
        self.tunnels_connected = Gauge("mproxy_edge_tunnels_connected",
                                       "WebSocket tunnels currently connected (authenticated or not).",
                                       registry=r)
        self.tunnel_connects = Counter("mproxy_edge_tunnel_connects_total",
                                       "Tunnel WebSocket connections accepted.", registry=r)
        self.tunnel_rejects = Counter("mproxy_edge_tunnel_rejects_total",
                                      "Tunnels or tokens refused, by reason (bad_signature, expired, "
                                      "no_token, protocol_error, ...).", ["reason"], registry=r)
        self.clients = Counter("mproxy_edge_client_connections_total",
                               "Client connections by protocol, granted name and result.",
                               ["protocol", "name", "result"], registry=r)
        self.clients_active = Gauge("mproxy_edge_client_connections_active",
                                    "Client connections currently open, by protocol.", ["protocol"],
                                    registry=r)
        self.bytes = Counter("mproxy_edge_bytes_total",
                             "Client payload bytes relayed; direction in = client to tunnel.",
                             ["protocol", "name", "direction"], registry=r)
        self.rejects = Counter("mproxy_edge_rejects_total",
                               "Client connections refused, by reason (no_tunnel, rate_limited, ...).",
                               ["reason"], registry=r)
        self.buffer_cuts = Counter("mproxy_edge_buffer_cuts_total",
                                   "Client streams cut with E_BUFFER because a tunnel kept sending while the "
                                   "client was paused, by the limit passed (hard, soft, tunnel).", ["limit"],
                                   registry=r)
        for limit in BUFFER_LIMITS:
            self.buffer_cuts.labels(limit)
        self.duration = Histogram("mproxy_edge_client_connection_duration_seconds",
                                  "How long client connections stayed open.", ["protocol"],
                                  buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600), registry=r)
        self.draining = Gauge("mproxy_edge_draining", "1 while the edge drains before shutting down.",
                              registry=r)
        self.task_restarts = Counter("mproxy_edge_task_restarts_total", "Long-lived tasks that failed and "
                                     "were restarted (flusher, tunnel_guard).", ["task"], registry=r)
        self.tasks_down = Gauge("mproxy_edge_tasks_down", "Supervised tasks failed and waiting for their "
                                "restart (the edge is not ready meanwhile).", ["task"], registry=r)
        for task in TASKS:
            self.task_restarts.labels(task)
            self.tasks_down.labels(task)
        # Children are cached: `labels()` costs a lock and a dict walk per call, and a new stream made five
        # such calls. The per-name caches drop a name's entries when _evict removes its series, so a stale
        # child can never bring an evicted series back.
        self._active = {p: self.clients_active.labels(p) for p in PROTOCOLS}
        self._durations = {p: self.duration.labels(p) for p in PROTOCOLS}
        self._bytes: dict[tuple[str, str, str], Counter] = {}
        self._clients: dict[tuple[str, str, str], Counter] = {}
        for reason in REJECT_REASONS:
            self.rejects.labels(reason)
        for reason in TUNNEL_REJECT_REASONS:
            self.tunnel_rejects.labels(reason)
        self._names: set[str] = set()

    def _name(self, name: str) -> str:
        """The `name` label: "" (not routed), a published granted name, or "(other)"."""
        return name if not name or name in self._names else "(other)"

    def set_tunnel_names(self, counts: dict[str, int]) -> None:
        """Publish tunnels per granted name. A name whose last tunnel left stays at 0 (that is the
        signal an operator wants), until MAX_NAMES forces the oldest idle names out."""
        for name in list(self._names):
            if name not in counts:
                self.tunnels.labels(name).set(0)
        for name, n in counts.items():
            if name not in self._names:
                if len(self._names) >= MAX_NAMES and not self._evict(counts):
                    continue
                self._names.add(name)
            self.tunnels.labels(name).set(n)

    def _evict(self, counts: dict[str, int]) -> bool:
        """Forget one name that no tunnel serves, with all its series; False if none can go."""
        for gone in self._names:
            if gone not in counts:
                self._names.discard(gone)
                for cache in (self._bytes, self._clients):
                    for key in [k for k in cache if k[1] == gone]:
                        del cache[key]
                _remove(self.tunnels, gone)
                for protocol in PROTOCOLS:
                    for result in CLIENT_RESULTS:
                        _remove(self.clients, protocol, gone, result)
                    for direction in ("in", "out"):
                        _remove(self.bytes, protocol, gone, direction)
                return True
        return False

    def client_active(self, protocol: str, delta: int) -> None:
        """A client connection was handed to a tunnel (+1) or ended (-1)."""
        child = self._active.get(protocol)
        (child or self.clients_active.labels(protocol)).inc(delta)

    def _byte_counter(self, protocol: str, name: str, direction: str) -> Counter:
        key = (protocol, name, direction)
        child = self._bytes.get(key)
        if child is None:
            child = self._bytes[key] = self.bytes.labels(*key)
        return child

    def add_bytes(self, protocol: str, name: str, bytes_in: int, bytes_out: int) -> None:
        name = self._name(name)
        if bytes_in:
            self._byte_counter(protocol, name, "in").inc(bytes_in)
        if bytes_out:
            self._byte_counter(protocol, name, "out").inc(bytes_out)

    def client_done(self, protocol: str, name: str, result: str, bytes_in: int, bytes_out: int,
                    seconds: float) -> None:
        """A client connection ended; `bytes_*` are its bytes not yet counted by add_bytes."""
        self.add_bytes(protocol, name, bytes_in, bytes_out)
        key = (protocol, self._name(name), result)
        child = self._clients.get(key)
        if child is None:
            child = self._clients[key] = self.clients.labels(*key)
        child.inc()
        hist = self._durations.get(protocol)
        (hist or self.duration.labels(protocol)).observe(seconds)

    def buffer_cut(self, limit: str) -> None:
        self.buffer_cuts.labels(limit if limit in BUFFER_LIMITS else "other").inc()

    def client_rejected(self, protocol: str, reason: str) -> None:
        self.rejects.labels(reason if reason in REJECT_REASONS else "other").inc()
        self.clients.labels(protocol if protocol in PROTOCOLS else "other", "", "rejected").inc()


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
