"""Check a Tunnel's routes against the real Services of its namespace (pure: Services come in as dicts).

A route resolves to the Service's cluster DNS name and a port number. A missing Service or port does not
fail the whole Tunnel: that route is left out of the sidecar config and reported, the others still work.
A route whose `match.services` lists `udp` takes `protocol: UDP` Service ports, any other route TCP ones
(a Service may have both under one number, as kube-dns has for 53); SCTP ports are never taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mproxy_operator.model import Route


@dataclass(frozen=True, slots=True)
class Resolved:
    route: Route
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Unresolved:
    route: Route
    reason: str  # ServiceNotFound | PortNotFound | UnsupportedService
    message: str


def _port_list(service: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    ports = (service.get("spec") or {}).get("ports") or []
    return [p for p in ports if isinstance(p, Mapping)]


def _describe(ports: list[Mapping[str, Any]]) -> str:
    return ", ".join(f"{p.get('name') or '-'}/{p.get('port')}{_suffix(p)}" for p in ports) or "none"


def _suffix(port: Mapping[str, Any]) -> str:
    protocol = _protocol(port)
    return "" if protocol == "TCP" else f"/{protocol}"


def _protocol(port: Mapping[str, Any]) -> str:
    return str(port.get("protocol") or "TCP")


def _protocols(route: Route) -> frozenset[str]:
    """The Service port protocols the route's streams can use: udp streams UDP, every other service TCP."""
    if not route.services:
        return frozenset({"TCP"})
    wanted = {"UDP" if s == "udp" else "TCP" for s in route.services}
    return frozenset(wanted)


def resolve_route(
    route: Route, service: Mapping[str, Any] | None, namespace: str, cluster_domain: str
) -> Resolved | Unresolved:
    where = f"Service {namespace}/{route.service}"
    if service is None:
        return Unresolved(
            route,
            "ServiceNotFound",
            f"route {route.name}: {where} does not exist; create it or fix spec.routes[].backend.service",
        )
    spec = service.get("spec") or {}
    host = f"{route.service}.{namespace}.svc.{cluster_domain}"
    ports = _port_list(service)
    if spec.get("type") == "ExternalName" and not ports:
        if isinstance(route.port, int):
            return Resolved(route, host, route.port)
        return Unresolved(
            route,
            "PortNotFound",
            f"route {route.name}: {where} is an ExternalName Service "
            f"without ports, so port {route.port!r} must be given as a number",
        )
    protocols = _protocols(route)
    wrong = []
    for p in ports:
        if (isinstance(route.port, int) and p.get("port") == route.port) or (
            isinstance(route.port, str) and p.get("name") == route.port
        ):
            if _protocol(p) not in protocols:
                wrong.append(_protocol(p))
                continue
            if spec.get("clusterIP") == "None":
                # A headless Service's name resolves to pod IPs: the pods listen on the target port.
                target = p.get("targetPort", p.get("port"))
                if not isinstance(target, int):
                    return Unresolved(
                        route,
                        "UnsupportedService",
                        f"route {route.name}: {where} is headless "
                        f"and its port {route.port!r} has the named targetPort {target!r}; "
                        "use a numeric targetPort or a Service with a cluster IP",
                    )
                return Resolved(route, host, target)
            return Resolved(route, host, int(p["port"]))
    if wrong:
        hint = ("list udp in spec.routes[].match.services for a UDP port" if "UDP" in wrong
                else "UDP routes (match.services: [udp]) need a UDP port")
        return Unresolved(
            route,
            "PortNotFound",
            f"route {route.name}: {where} port {route.port!r} is {'/'.join(sorted(set(wrong)))}, not "
            f"{'/'.join(sorted(protocols))} (its ports: {_describe(ports)}); {hint}",
        )
    return Unresolved(
        route,
        "PortNotFound",
        f"route {route.name}: {where} has no port {route.port!r} "
        f"(its ports: {_describe(ports)}); fix spec.routes[].backend.port",
    )


def resolve_routes(
    routes: tuple[Route, ...],
    services: Mapping[str, Mapping[str, Any]],
    namespace: str,
    cluster_domain: str = "cluster.local",
) -> tuple[list[Resolved], list[Unresolved]]:
    resolved: list[Resolved] = []
    unresolved: list[Unresolved] = []
    for route in routes:
        result = resolve_route(route, services.get(route.service), namespace, cluster_domain)
        (resolved if isinstance(result, Resolved) else unresolved).append(result)  # type: ignore[arg-type]
    return resolved, unresolved
