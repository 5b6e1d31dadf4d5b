"""The sidecar process: tunnel slots, routes, metrics, HTTP endpoints, config reload and graceful stop.

`Sidecar(config, config_path=...)`; `await sidecar.start()`; `await sidecar.shutdown()` (what SIGTERM does:
refuse new streams with E_SHUTTING_DOWN so the relay can use another replica, let streams in flight finish
up to `drainSeconds`, then close every tunnel with 1001). A reloaded config swaps the route table for new
streams (streams in flight keep their backend), rebuilds the HTTP routers (a keep-alive connection routes
its next request with the new rules), applies limits, and adds or drains tunnel slots whose URL set
changed. The metrics label tier and the HTTP listen address apply at the next restart.

Long-lived tasks (each tunnel slot, the metrics flush loop, the config watcher) are supervised: one that
fails is logged once, counted in mproxy_sidecar_task_restarts_total{task}, shown in /status, and restarted
with backoff; while the flush loop or the watcher waits for its restart /readyz is 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from prometheus_client import CollectorRegistry

from mproxy.codec.errors import ErrorCode
from mproxy.config.loader import ConfigWatcher
from mproxy.config.sidecar import SidecarConfig, load_sidecar_config
from mproxy.metrics.http import HttpMetrics
from mproxy.metrics.sidecar import SidecarMetrics
from mproxy.metrics.udp import UdpMetrics
from mproxy.observe.http import ObserveServer
from mproxy.routing import Backend, Route, RouteTable
from mproxy.sidecar.backend import BackendHandler, BackendOptions
from mproxy.sidecar.edges import EdgePool
from mproxy.sidecar.l7.front import L7Front
from mproxy.sidecar.tunnel_client import TunnelClient, mux_limits
from mproxy.sidecar.udp_backend import UdpBackend
from mproxy.tunnel import Stream, StreamHandler
from mproxy.tunnel.supervisor import Supervised

__all__ = ["Sidecar", "backend_options", "build_table"]

log = logging.getLogger("mproxy.sidecar")

METRICS_FLUSH_SECONDS = 2.0
_REFUSAL_REASONS: dict[str, str] = {ErrorCode.LIMIT: "limit", ErrorCode.SHUTTING_DOWN: "draining"}


def build_table(cfg: SidecarConfig, rng: random.Random | None = None) -> RouteTable:
    routes = [
        Route(
            name=r.name,
            backends=tuple(Backend(b.host, b.port, b.connect_timeout_seconds, b.proxy_protocol, b.weight,
                                   b.refuse) for b in r.targets),
            services=frozenset(r.match.services),
            ports=frozenset(r.match.ports),
            hostnames=r.match.hostnames,
            http=r.http,
        )
        for r in cfg.routes
    ]
    return RouteTable(routes, cfg.default_route, rng=rng)


def backend_options(cfg: SidecarConfig) -> BackendOptions:
    """Per-stream options from the config's limits (flow control and the E_BUFFER rule)."""
    lim = cfg.limits
    return BackendOptions(stream_buffer=lim.stream_buffer_bytes, soft_buffer=lim.buffer_soft_bytes,
                          hard_buffer=lim.buffer_hard_bytes, grace=lim.buffer_grace_seconds,
                          tunnel_buffer=lim.tunnel_buffer_bytes)


class Sidecar:
    def __init__(
        self,
        config: SidecarConfig,
        *,
        config_path: str | None = None,
        registry: CollectorRegistry | None = None,
        serve_http: bool = True,
        reload_interval: float = 2.0,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.table = build_table(config)
        self.metrics = SidecarMetrics(registry, tier=config.metrics.labels,
                                      max_clients=config.metrics.max_clients)
        self.udp_metrics = UdpMetrics(self.metrics.registry, "sidecar", "route")
        # The HTTP routers (routes[].http); raises ConfigError when a router's certificate does not load.
        self.l7 = L7Front(HttpMetrics(self.metrics.registry))
        self.l7.update(config.http_routers)
        for r in config.routes:
            if "udp" in r.match.services:
                self.udp_metrics.start(r.name)
        self.tunnels: list[TunnelClient] = []
        self.pools: dict[str, EdgePool] = {}  # edge URL -> its slots, one set per edge replica
        self.started_at = time.time()
        self.draining = False
        self._serve_http = serve_http
        self._reload_interval = reload_interval
        self.http: ObserveServer | None = None
        self.watcher: ConfigWatcher[SidecarConfig] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.supervised: list[Supervised] = []  # the flush loop and the config watcher
        self._stopped = asyncio.Event()
        self._refused_seen: dict[str, tuple[int, dict[str, int]]] = {}
        self._opts_cache: tuple[SidecarConfig, BackendOptions] | None = None

    # -- streams ----------------------------------------------------------------------------------

    def _backend_opts(self) -> BackendOptions:
        # Built once per config (a reload swaps self.config): not a new object and rule per stream.
        config = self.config
        cached = self._opts_cache
        if cached is None or cached[0] is not config:
            cached = self._opts_cache = (config, backend_options(config))
        return cached[1]

    def accept(self, stream: Stream, tunnel: TunnelClient) -> StreamHandler:
        # The table is captured per stream: a reload never re-routes a stream in flight.
        if stream.service == "udp":
            return UdpBackend(stream, self.table, self.metrics, self.udp_metrics,
                              self.config.limits.udp_idle_timeout_seconds, tunnel.label)
        return BackendHandler(stream, self.table, self.metrics, self._backend_opts(), tunnel.label, self.l7)

    # -- lifecycle --------------------------------------------------------------------------------

    def _new_pool(self, url: str) -> EdgePool:
        edge = self.config.edge
        pool = EdgePool(url, edge.connections_per_url, edge.nameservers, edge.resolve_seconds,
                        spawn=self._new_tunnel, retire=self._retire_later, on_change=self._edges_changed,
                        probe_seconds=edge.probe_seconds)
        self.pools[url] = pool
        pool.start()
        return pool

    def _new_tunnel(self, pool: EdgePool, index: int) -> TunnelClient:
        t = TunnelClient(pool.url, index, lambda: self.config, self.accept, self._tunnel_state,
                         on_crash=self._task_crashed, on_restart=self._count_down, pool=pool)
        self.tunnels.append(t)
        t.start()
        return t

    def _retire_later(self, t: TunnelClient) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._retire(t, loop.time() + self.config.drain_seconds)))

    def _edges_changed(self, pool: EdgePool) -> None:
        self.metrics.edges(pool.edge, pool.expected, pool.connected_edges)

    def _tunnel_state(self, t: TunnelClient) -> None:
        conn = str(t.index)
        if t.state == "connected":
            self.metrics.tunnel_up(t.edge, conn)
        elif t.state == "backoff":
            self.metrics.tunnel_down(t.edge, conn, t.last_reason or _reason_label(t.last_error))
        elif t.state == "failed":
            self.metrics.tunnel_down(t.edge, conn, "task_failed")
        elif t.state == "stopped":
            self.metrics.tunnel_connected.labels(t.edge, conn).set(0)

    def _task_crashed(self, sup: Supervised) -> None:
        self.metrics.task_restarts.labels(sup.kind).inc()
        self._count_down()

    def _count_down(self, _: Supervised | None = None) -> None:
        down: dict[str, int] = {}
        every = [*self.supervised, *(t.supervised for t in self.tunnels if t.supervised is not None)]
        for sup in every:
            down[sup.kind] = down.get(sup.kind, 0) + int(sup.down)
        for kind, n in down.items():
            self.metrics.tasks_down.labels(kind).set(n)

    def _supervise(self, name: str, kind: str, factory: Any) -> None:
        sup = Supervised(name, kind, factory, on_crash=self._task_crashed, on_restart=self._count_down)
        self.supervised.append(sup)
        self._tasks.append(sup.task)

    async def start(self) -> None:
        if self._serve_http:
            host, port = self.config.http.host_port
            self.http = ObserveServer(self.metrics.registry, self.ready, self.status, host=host, port=port)
            await self.http.start()
            log.info("HTTP endpoints on %s:%d", host, self.http.port)
        for url in self.config.edge.urls:
            self._new_pool(url)
        self._supervise("metrics flush loop", "flush", self._flush_loop)
        if self.config_path:
            watcher = self.watcher = ConfigWatcher(
                self.config_path, self._load_checked, self.apply_config, interval=self._reload_interval,
                on_error=lambda _: self.metrics.config_reloads.labels("refused").inc(),
            )
            self._supervise("config watcher", "config_watcher", lambda: watcher.run())

    def _load_checked(self, source: str | bytes) -> SidecarConfig:
        """The schema, then what it cannot check: that every HTTP router's certificates load (so a bad
        one is a refused reload, with its reason in /status, like a schema error)."""
        cfg = load_sidecar_config(source)
        self.l7.check(cfg.http_routers)
        return cfg

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def shutdown(self) -> None:
        """Drain: refuse new streams, wait for streams in flight up to drainSeconds, close with 1001."""
        if self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        for pool in self.pools.values():
            pool.stop()
        in_flight = sum(len(t.mux.streams) for t in self.tunnels if t.mux and not t.mux.closed)
        log.info("shutting down: %d streams in flight, waiting up to %g s", in_flight,
                 self.config.drain_seconds)
        deadline = asyncio.get_running_loop().time() + self.config.drain_seconds
        for t in self.tunnels:  # UDP clients have no end of their own: end them once they go quiet
            for stream in list(t.mux.streams.values()) if t.mux is not None else ():
                if isinstance(stream.handler, UdpBackend):
                    stream.handler.drain()
        await asyncio.gather(self.l7.drain(self.config.drain_seconds),
                             *(t.drain_and_stop(deadline) for t in self.tunnels))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.l7.close()
        self._flush_metrics()
        if self.http is not None:
            await self.http.stop()
        self._stopped.set()
        log.info("stopped")

    # -- reload -----------------------------------------------------------------------------------

    def apply_config(self, new: SidecarConfig) -> None:
        old = self.config
        try:
            table = build_table(new)
            self.l7.update(new.http_routers)  # builds every router first: on failure nothing changed
        except ValueError as exc:  # ConfigError: a certificate that does not load; the schema checks the rest
            log.error("config reload refused: %s", exc)
            self.metrics.config_reloads.labels("refused").inc()
            return
        self.config = new
        self.table = table
        limits = mux_limits(new)
        for t in self.tunnels:
            if t.mux is not None:
                t.mux.limits = limits
        if new.metrics != old.metrics or new.http != old.http:
            log.warning("metrics and http settings change at the next restart")
        for url in list(self.pools):
            if url not in new.edge.urls:
                pool = self.pools.pop(url)
                for t in pool.stop():
                    self._retire_later(t)
                self.metrics.forget_edges(pool.edge)
        for url in new.edge.urls:
            pool = self.pools.get(url) or self._new_pool(url)
            pool.connections, pool.nameservers = new.edge.connections_per_url, new.edge.nameservers
            pool.resolve_seconds, pool.probe_seconds = new.edge.resolve_seconds, new.edge.probe_seconds
            pool.reconcile()
        self.metrics.config_reloads.labels("applied").inc()
        log.info("config applied: %d routes, %d tunnel connections", len(new.routes),
                 sum(len(p.slots) for p in self.pools.values()))

    async def _retire(self, t: TunnelClient, deadline: float) -> None:
        await t.drain_and_stop(deadline)
        with contextlib.suppress(ValueError):
            self.tunnels.remove(t)

    # -- observability ----------------------------------------------------------------------------

    def _flush_metrics(self) -> None:
        for t in self.tunnels:
            mux = t.mux
            if mux is None:
                continue
            # Refusals answered inside the tunnel (limits, draining): count the new ones.
            key, seen = self._refused_seen.get(t.label, (0, {}))
            if key != id(mux):
                seen = {}
                self._refused_seen[t.label] = (id(mux), seen)
            for code, n in mux.refused.items():
                new = n - seen.get(code, 0)
                if new > 0:
                    self.metrics.refused.labels(_REFUSAL_REASONS.get(code, code.lower())).inc(new)
                    seen[code] = n
            if mux.closed:
                continue
            for stream in mux.streams.values():
                handler = stream.handler
                if isinstance(handler, BackendHandler):
                    handler.flush_metrics()
            self.metrics.tunnel_streams.labels(t.edge, str(t.index)).set(len(mux.streams))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(METRICS_FLUSH_SECONDS)
            self._flush_metrics()

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting down"
        failed = [f"{sup.name} failed ({sup.error}), restarting" for sup in self.supervised if sup.down]
        if failed:
            return False, "; ".join(failed)
        if any(t.connected for t in self.tunnels):
            return True, ""
        errors = "; ".join(f"{t.label}: {t.last_error}" for t in self.tunnels if t.last_error)
        return False, "no tunnel connected" + (f" ({errors})" if errors else "")

    def status(self) -> dict[str, Any]:
        self._flush_metrics()
        tunnels = [t.status() for t in self.tunnels]
        return {
            "role": "sidecar",
            "ready": self.ready()[0],
            "draining": self.draining,
            "startedAt": self.started_at,
            "routes": [r.name for r in self.table.routes],
            "defaultRoute": self.table.default.name if self.table.default else None,
            "httpRouters": self.l7.status(),
            "tunnels": tunnels,
            "edges": [{"edge": p.edge, **p.status()} for p in self.pools.values()],
            "streams": sum(t["streams"] for t in tunnels),
            "tasks": [{"task": sup.kind, "down": sup.down, "restarts": sup.restarts, "lastError": sup.error}
                      for sup in self.supervised],
            "config": {
                "path": self.config_path,
                "reloads": self.watcher.reloads if self.watcher else 0,
                "rejected": self.watcher.rejected if self.watcher else 0,
                "lastError": self.watcher.last_error if self.watcher else None,
            },
        }


def _reason_label(error: str | None) -> str:
    """A bounded label value for why a tunnel went down."""
    if not error:
        return "unknown"
    head = error.split(":", 1)[0].strip()
    known = {"peer_closed", "protocol_error", "dead_peer", "transport_error", "closed"}
    if head in known:
        return head
    if "refused the token" in error:
        return "auth_failed"
    if "HTTP" in error:
        return "handshake_failed"
    return "connect_failed"
