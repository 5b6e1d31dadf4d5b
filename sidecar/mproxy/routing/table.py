"""The route table: which backend a client stream goes to.

A route matches on service name (https, http, ssh, tcp, tls or any custom name), serviceport and host name
(exact, or a "*.example.com" wildcard that matches any name below example.com). Empty criteria match
anything. When several routes match, the most specific wins: an exact name beats a wildcard, a longer
wildcard beats a shorter one, any name beats no name; then a listed port beats any port, a listed service
beats any service; ties go to the route listed first. Nothing matching falls to the default route, if any;
otherwise the stream is refused (a stream never reaches an address that no route declares).

A route has one or more weighted backends: each new stream picks one with probability weight/sum
(`RouteTable.pick`); a backend with `refuse` set stands for a share of streams that is refused (an invalid
backend in Gateway API terms), and a route whose weights are all 0 refuses every stream.
A route with `http` names the HTTP router that serves its streams (mproxy.sidecar.l7) instead of a backend.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Backend", "Route", "RouteTable"]


@dataclass(frozen=True, slots=True)
class Backend:
    host: str
    port: int
    connect_timeout: float = 5.0
    proxy_protocol: str = "none"  # none | v1 | v2
    weight: int = 1  # this backend's share of the route's new streams: weight / sum of weights
    refuse: bool = False  # the share is refused (host and port unused)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    backends: tuple[Backend, ...]
    services: frozenset[str] = frozenset()
    ports: frozenset[int] = frozenset()
    hostnames: tuple[str, ...] = ()
    http: str | None = None  # the HTTP router that serves the stream instead of a backend (backends empty)
    # Running sums of the backends' weights, for the pick (built once per route, not per stream).
    _cumulative: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.backends and self.http is None:
            raise ValueError(f"route {self.name!r} has no backend")
        sums, total = [], 0
        for b in self.backends:
            if b.weight < 0:
                raise ValueError(f"route {self.name!r}: backend weights must be >= 0 (got {b.weight})")
            total += b.weight
            sums.append(total)
        object.__setattr__(self, "_cumulative", tuple(sums))

    @property
    def total_weight(self) -> int:
        return self._cumulative[-1] if self._cumulative else 0

    def pick(self, u: float) -> Backend | None:
        """The backend for a stream given a uniform `u` in [0, 1); None: the stream is refused (a refuse
        share, or every weight 0)."""
        total = self.total_weight
        if total == 0:
            return None
        if len(self.backends) == 1:
            b = self.backends[0]
        else:
            b = self.backends[min(bisect_right(self._cumulative, u * total), len(self.backends) - 1)]
        return None if b.refuse else b

    def name_score(self, name: str) -> tuple[int, int] | None:
        """How specifically this route's host names match `name` (None: no match)."""
        if not self.hostnames:
            return (0, 0)
        if not name:
            return None
        scores = []
        for pattern in self.hostnames:
            if pattern.startswith("*."):
                suffix = pattern[1:]  # ".example.com"
                if name.endswith(suffix) and len(name) > len(suffix):
                    scores.append((1, len(suffix)))
            elif pattern == name:
                scores.append((2, len(name)))
        return max(scores, default=None)


class RouteTable:
    """An immutable, validated set of routes; `match()` is pure and cheap."""

    def __init__(self, routes: Iterable[Route], default: str | None = None, *,
                 rng: random.Random | None = None) -> None:
        self.routes = tuple(routes)
        self._random = (rng or random.Random()).random  # seeded in tests
        self._by_name = {r.name: r for r in self.routes}
        if len(self._by_name) != len(self.routes):
            raise ValueError("route names must be unique")
        self.default = None if default is None else self._by_name.get(default)
        if default is not None and self.default is None:
            raise ValueError(f"default route {default!r} is not one of the routes")

    def pick(self, route: Route) -> Backend | None:
        """The backend a new stream of `route` goes to, by weight; None: refused (see Route.pick)."""
        return route.pick(self._random()) if len(route.backends) > 1 else route.pick(0.0)

    def get(self, name: str) -> Route | None:
        return self._by_name.get(name)

    def _candidates(self, service: str, serviceport: int | None) -> list[Route]:
        return [
            r
            for r in self.routes
            if (not r.services or service in r.services)
            and (not r.ports or (serviceport is not None and serviceport in r.ports))
        ]

    def wants_name(self, service: str, serviceport: int | None) -> bool:
        """True when a host name could change the outcome: then sniff SNI/Host if the relay sent none."""
        return any(r.hostnames for r in self._candidates(service.lower(), serviceport))

    def match(self, service: str, serviceport: int | str | None, name: str = "") -> Route | None:
        port = _port(serviceport)
        name = name.lower().rstrip(".")
        service = service.lower()
        best: tuple[tuple[int, int, int, int, int], Route] | None = None
        for index, route in enumerate(self._candidates(service, port)):
            ns = route.name_score(name)
            if ns is None:
                continue
            key = (ns[0], ns[1], 1 if route.ports else 0, 1 if route.services else 0, -index)
            if best is None or key > best[0]:
                best = (key, route)
        if best is not None:
            return best[1]
        return self.default


def _port(value: int | str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
