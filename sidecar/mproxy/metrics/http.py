"""The sidecar's HTTP router metrics (mproxy.sidecar.l7), on the sidecar's registry (docs/metrics.md).

Labels are bounded by the config: `router` and `route` are names from `httpRouters` (`route="(none)"` for
a request no route matched, or one refused before routing), `code` is the status class (`1xx`..`5xx`).
The series of a router's routes start at 0 when the router is configured and are removed when a reload
drops the route or the router.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["NO_ROUTE", "HttpMetrics"]

P = "mproxy_sidecar_http_"
NO_ROUTE = "(none)"
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter(P + "requests", "HTTP requests answered by the sidecar's HTTP routers, "
                                "by router, HTTPRoute and status class.", ("router", "route", "code"),
                                registry=r)
        self.active = Gauge(P + "requests_active", "HTTP requests in progress.", ("router",), registry=r)
        self.duration = Histogram(P + "response_seconds", "Time from a request's head to its response "
                                  "head.", ("router",), buckets=BUCKETS, registry=r)
        self._known: dict[str, tuple[str, ...]] = {}  # router -> its route label values

    def configure(self, routers: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        """Start the series of every (router, routes); remove those of routers and routes now gone."""
        new = {name: (NO_ROUTE, *routes) for name, routes in routers}
        for name, routes in self._known.items():
            keep = new.get(name, ())
            for route in routes:
                if route not in keep:
                    for code in CLASSES:
                        self.requests.remove(name, route, code)
            if name not in new:
                self.active.remove(name)
                self.duration.remove(name)
        for name, routes in new.items():
            self.active.labels(name)
            self.duration.labels(name)
            for route in routes:
                for code in CLASSES:
                    self.requests.labels(name, route, code)
        self._known = new

    def answered(self, router: str, route: str, status: int) -> None:
        if router in self._known and route in self._known[router]:
            code = CLASSES[min(max(status // 100, 1), 5) - 1]
            self.requests.labels(router, route, code).inc()
