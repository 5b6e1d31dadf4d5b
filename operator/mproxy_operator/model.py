"""The Tunnel spec as typed, frozen values, with the CRD's defaults applied.

The apiserver already validates against the CRD schema; this parser still checks what it reads (an
old CRD, a hand-made object in a unit test) and raises SpecError naming the field, never KeyError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MODES = ("Sidecar", "Connector")
# The old name of Connector mode, still accepted (read as Connector) so existing Tunnels keep working.
LEGACY_MODES = {"Gateway": "Connector"}


class SpecError(ValueError):
    """A Tunnel spec the operator cannot use; the message starts with the field path."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True, slots=True)
class Selector:
    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [dict(e) for e in self.match_expressions]
        return out


@dataclass(frozen=True, slots=True)
class KeyRef:
    kind: str  # ConfigMap | Secret
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class Edge:
    urls: tuple[str, ...]
    token: KeyRef
    connections_per_url: int = 1
    token_in: str = "header"  # noqa: S105 (where the token goes, not a token)
    ca: KeyRef | None = None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    service: str
    port: int | str  # a Service port number or name
    services: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    hostnames: tuple[str, ...] = ()
    proxy_protocol: str = "none"
    connect_timeout_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class SidecarOverrides:
    image: str | None = None
    image_pull_policy: str | None = None
    resources: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TunnelSpec:
    edge: Edge
    routes: tuple[Route, ...]
    mode: str = "Sidecar"
    selector: Selector | None = None
    connector_replicas: int = 2
    default_route: str | None = None
    limits: Mapping[str, Any] = field(default_factory=dict)
    metrics_labels: str = "client"
    metrics_max_clients: int = 200
    metrics_port: int = 9090
    log_level: str = "info"
    drain_seconds: float = 20.0
    sidecar: SidecarOverrides = field(default_factory=SidecarOverrides)

    def referenced_services(self) -> frozenset[str]:
        return frozenset(r.service for r in self.routes)


def _map(value: object, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be an object (got {type(value).__name__})")
    return value


def _list(value: object, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(path, f"must be a list (got {type(value).__name__})")
    return value


def _str(obj: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or not value:
        raise SpecError(
            f"{path}.{key}",
            "is required (a non-empty string)"
            if value is None
            else f"must be a non-empty string (got {value!r})",
        )
    return value


def _int(obj: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"{path}.{key}", f"must be an integer {lo}-{hi} (got {value!r})")
    return value


def _num(obj: Mapping[str, Any], key: str, path: str, default: float, lo: float, hi: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise SpecError(f"{path}.{key}", f"must be a number {lo:g}-{hi:g} (got {value!r})")
    return float(value)


def _choice(obj: Mapping[str, Any], key: str, path: str, default: str, options: tuple[str, ...]) -> str:
    value = obj.get(key, default)
    if value not in options:
        raise SpecError(f"{path}.{key}", f"must be one of {', '.join(options)} (got {value!r})")
    return str(value)


def _key_ref(value: object, path: str, default_kind: str, default_key: str) -> KeyRef:
    obj = _map(value, path)
    return KeyRef(
        kind=_choice(obj, "kind", path, default_kind, ("ConfigMap", "Secret")),
        name=_str(obj, "name", path),
        key=_str(obj, "key", path, default_key),
    )


def _selector(value: object, path: str) -> Selector | None:
    if value is None:
        return None
    obj = _map(value, path)
    labels = _map(obj.get("matchLabels"), f"{path}.matchLabels")
    exprs = []
    for i, item in enumerate(_list(obj.get("matchExpressions"), f"{path}.matchExpressions")):
        ipath = f"{path}.matchExpressions[{i}]"
        expr = _map(item, ipath)
        _str(expr, "key", ipath)
        _choice(expr, "operator", ipath, "", ("In", "NotIn", "Exists", "DoesNotExist"))
        exprs.append(dict(expr))
    return Selector({str(k): str(v) for k, v in labels.items()}, tuple(exprs))


def _route(value: object, path: str) -> Route:
    obj = _map(value, path)
    match = _map(obj.get("match"), f"{path}.match")
    backend = _map(obj.get("backend"), f"{path}.backend")
    port = backend.get("port")
    if isinstance(port, bool) or not isinstance(port, int | str) or port in ("", 0):
        raise SpecError(f"{path}.backend.port", f"must be a Service port number or name (got {port!r})")
    ports = tuple(_list(match.get("ports"), f"{path}.match.ports"))
    for j, p in enumerate(ports):
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise SpecError(f"{path}.match.ports[{j}]", f"must be 1-65535 (got {p!r})")
    services = tuple(str(s) for s in _list(match.get("services"), f"{path}.match.services"))
    if "udp" in services and obj.get("proxyProtocol", "none") != "none":
        raise SpecError(f"{path}.proxyProtocol", "must be none for a udp route (PROXY headers are for TCP)")
    if "udp" in services and match.get("hostnames"):
        raise SpecError(f"{path}.match.hostnames",
                        "must be empty for a udp route (UDP clients carry no name)")
    return Route(
        name=_str(obj, "name", path),
        service=_str(backend, "service", f"{path}.backend"),
        port=port,
        services=services,
        ports=ports,
        hostnames=tuple(str(h) for h in _list(match.get("hostnames"), f"{path}.match.hostnames")),
        proxy_protocol=_choice(obj, "proxyProtocol", path, "none", ("none", "v1", "v2")),
        connect_timeout_seconds=_num(obj, "connectTimeoutSeconds", path, 5.0, 0.001, 300),
    )


def _connector_replicas(spec: Mapping[str, Any]) -> int:
    """spec.connector.replicas, else the old spec.gateway.replicas (connector mode's former name)."""
    key = "connector" if spec.get("connector") is not None or spec.get("gateway") is None else "gateway"
    return _int(_map(spec.get(key), f"spec.{key}"), "replicas", f"spec.{key}", 2, 0, 100)


def parse_spec(spec: Mapping[str, Any]) -> TunnelSpec:
    """Turn a Tunnel's .spec into a TunnelSpec; raises SpecError."""
    spec = _map(spec, "spec")
    mode = _choice(spec, "mode", "spec", "Sidecar", (*MODES, *LEGACY_MODES))
    mode = LEGACY_MODES.get(mode, mode)
    edge_obj = _map(spec.get("edge"), "spec.edge")
    urls = _list(edge_obj.get("urls"), "spec.edge.urls")
    if not urls:
        raise SpecError("spec.edge.urls", "needs at least one ws:// or wss:// URL of the edge relay")
    for i, url in enumerate(urls):
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise SpecError(f"spec.edge.urls[{i}]", f"must be a ws:// or wss:// URL (got {url!r})")
    if "tokenSecretRef" not in edge_obj:
        raise SpecError("spec.edge.tokenSecretRef", "is required (the Secret holding the edge token)")
    edge = Edge(
        urls=tuple(urls),
        token=_key_ref(edge_obj["tokenSecretRef"], "spec.edge.tokenSecretRef", "Secret", "token"),
        connections_per_url=_int(edge_obj, "connectionsPerUrl", "spec.edge", 1, 1, 64),
        token_in=_choice(edge_obj, "tokenIn", "spec.edge", "header", ("header", "query", "handshake")),
        ca=(
            _key_ref(edge_obj["caRef"], "spec.edge.caRef", "ConfigMap", "ca.crt")
            if edge_obj.get("caRef") is not None
            else None
        ),
    )
    routes = tuple(
        _route(r, f"spec.routes[{i}]") for i, r in enumerate(_list(spec.get("routes"), "spec.routes"))
    )
    names = [r.name for r in routes]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SpecError(f"spec.routes[{i}].name", f"duplicate route name {name!r}")
    default_route = spec.get("defaultRoute")
    if default_route is not None and default_route not in names:
        raise SpecError("spec.defaultRoute", f"names no route (got {default_route!r})")
    selector = _selector(spec.get("selector"), "spec.selector")
    if mode == "Sidecar" and selector is None:
        raise SpecError(
            "spec.selector", "is required in Sidecar mode (it picks the pods that get the sidecar)"
        )
    metrics = _map(spec.get("metrics"), "spec.metrics")
    sidecar = _map(spec.get("sidecar"), "spec.sidecar")
    resources = sidecar.get("resources")
    return TunnelSpec(
        edge=edge,
        routes=routes,
        mode=mode,
        selector=selector,
        connector_replicas=_connector_replicas(spec),
        default_route=default_route,
        limits=dict(_map(spec.get("limits"), "spec.limits")),
        metrics_labels=_choice(metrics, "labels", "spec.metrics", "client", ("off", "route", "client")),
        metrics_max_clients=_int(metrics, "maxClients", "spec.metrics", 200, 1, 100_000),
        metrics_port=_int(metrics, "port", "spec.metrics", 9090, 1, 65535),
        log_level=_choice(spec, "logLevel", "spec", "info", ("debug", "info", "warning", "error")),
        drain_seconds=_num(spec, "drainSeconds", "spec", 20.0, 0, 3600),
        sidecar=SidecarOverrides(
            image=sidecar.get("image") or None,
            image_pull_policy=sidecar.get("imagePullPolicy") or None,
            resources=dict(_map(resources, "spec.sidecar.resources")) if resources is not None else None,
        ),
    )
