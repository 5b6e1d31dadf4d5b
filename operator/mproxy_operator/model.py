"""The Tunnel spec as typed, frozen values, with the CRD's defaults applied.

The apiserver already validates against the CRD schema; this parser still checks what it reads (an
old CRD, a hand-made object in a unit test) and raises SpecError naming the field, never KeyError.
Keys that are sidecar config fields (SIDECAR_FIELDS) are read with the sidecar schema's own
declarations (mproxy.config.schema); spec.limits is the sidecar's `limits`, checked when the config is
rendered. The CRD declares all of them with the schema's bounds (tests/unit/operator/test_crd_agrees.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mproxy.config import fields as f
from mproxy.config import schema
from mproxy.config.common import LoggingConfig, listener_groups
from mproxy.config.errors import ConfigError
from mproxy.config.sidecar import BackendConfig, EdgeDialConfig, MetricsConfig, SidecarConfig

MODES = ("Sidecar", "Connector")
# The old name of Connector mode, still accepted (read as Connector) so existing Tunnels keep working.
LEGACY_MODES = {"Gateway": "Connector"}
# Tunnel spec key (below .spec) -> the sidecar config field it becomes.
SIDECAR_FIELDS: dict[str, tuple[type, str]] = {
    "edge.connectionsPerUrl": (EdgeDialConfig, "connections_per_url"),
    "edge.tokenIn": (EdgeDialConfig, "token_in"),
    "routes[].proxyProtocol": (BackendConfig, "proxy_protocol"),
    "routes[].connectTimeoutSeconds": (BackendConfig, "connect_timeout_seconds"),
    "metrics.labels": (MetricsConfig, "labels"),
    "metrics.maxClients": (MetricsConfig, "max_clients"),
    "logLevel": (LoggingConfig, "level"),
    "drainSeconds": (SidecarConfig, "drain_seconds"),
}


class SpecError(ConfigError):
    """A Tunnel spec the operator cannot use; the message starts with the field path."""


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
    connections_per_url: int = schema.default(EdgeDialConfig, "connections_per_url")
    token_in: str = schema.default(EdgeDialConfig, "token_in")
    ca: KeyRef | None = None
    # the sidecar's edge.listenerGroups (a list the sidecar's loader reads itself: not a SIDECAR_FIELDS
    # entry; the CRD's pattern and maxItems are checked against mproxy.config.common)
    listener_groups: tuple[str, ...] = schema.default(EdgeDialConfig, "listener_groups")


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    service: str
    port: int | str  # a Service port number or name
    services: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    hostnames: tuple[str, ...] = ()
    proxy_protocol: str = schema.default(BackendConfig, "proxy_protocol")
    connect_timeout_seconds: float = schema.default(BackendConfig, "connect_timeout_seconds")


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
    limits: Mapping[str, Any] = field(default_factory=dict)  # checked when rendered (InvalidConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    metrics_port: int = 9090
    log_level: str = schema.default(LoggingConfig, "level")
    drain_seconds: float = schema.default(SidecarConfig, "drain_seconds")
    sidecar: SidecarOverrides = field(default_factory=SidecarOverrides)

    def referenced_services(self) -> frozenset[str]:
        return frozenset(r.service for r in self.routes)


def _sidecar(obj: Mapping[str, Any], path: str, name: str) -> Any:
    """SIDECAR_FIELDS[name] from obj (at path), read with the sidecar's declaration of that field."""
    cls, attr = SIDECAR_FIELDS[name]
    return schema.read_field(cls, attr, obj, path, key=name.rsplit(".", 1)[-1])


def _choice(obj: Mapping[str, Any], key: str, path: str, default: str, options: tuple[str, ...]) -> str:
    """A Kubernetes enum: exact case (mproxy.config.fields.choice folds case, as the sidecar's YAML may)."""
    value = obj.get(key, default)
    if value not in options:
        raise SpecError(f"{path}.{key}", f"must be one of {', '.join(options)} (got {value!r})")
    return str(value)


def _key_ref(value: object, path: str, default_kind: str, default_key: str) -> KeyRef:
    obj = f.mapping(value, path)
    return KeyRef(
        kind=_choice(obj, "kind", path, default_kind, ("ConfigMap", "Secret")),
        name=f.string(obj, "name", path),
        key=f.string(obj, "key", path, default_key),
    )


def _selector(value: object, path: str) -> Selector | None:
    if value is None:
        return None
    obj = f.mapping(value, path)
    labels = f.mapping(obj.get("matchLabels"), f"{path}.matchLabels")
    exprs = []
    for i, item in enumerate(f.seq(obj, "matchExpressions", path)):
        ipath = f"{path}.matchExpressions[{i}]"
        expr = f.mapping(item, ipath)
        f.string(expr, "key", ipath)
        _choice(expr, "operator", ipath, "", ("In", "NotIn", "Exists", "DoesNotExist"))
        exprs.append(dict(expr))
    return Selector({str(k): str(v) for k, v in labels.items()}, tuple(exprs))


def _route(value: object, path: str) -> Route:
    obj = f.mapping(value, path)
    match = f.mapping(obj.get("match"), f"{path}.match")
    backend = f.mapping(obj.get("backend"), f"{path}.backend")
    port = backend.get("port")
    if isinstance(port, bool) or not isinstance(port, int | str) or port in ("", 0):
        raise SpecError(f"{path}.backend.port", f"must be a Service port number or name (got {port!r})")
    ports = tuple(f.seq(match, "ports", f"{path}.match"))
    for j, p in enumerate(ports):
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise SpecError(f"{path}.match.ports[{j}]", f"must be 1-65535 (got {p!r})")
    services = tuple(str(s) for s in f.seq(match, "services", f"{path}.match"))
    if "udp" in services and obj.get("proxyProtocol", "none") != "none":
        raise SpecError(f"{path}.proxyProtocol", "must be none for a udp route (PROXY headers are for TCP)")
    if "udp" in services and match.get("hostnames"):
        raise SpecError(f"{path}.match.hostnames",
                        "must be empty for a udp route (UDP clients carry no name)")
    return Route(
        name=f.string(obj, "name", path),
        service=f.string(backend, "service", f"{path}.backend"),
        port=port,
        services=services,
        ports=ports,
        hostnames=tuple(str(h) for h in f.seq(match, "hostnames", f"{path}.match")),
        proxy_protocol=_sidecar(obj, path, "routes[].proxyProtocol"),
        connect_timeout_seconds=_sidecar(obj, path, "routes[].connectTimeoutSeconds"),
    )


def _connector_replicas(spec: Mapping[str, Any]) -> int:
    """spec.connector.replicas, else the old spec.gateway.replicas (connector mode's former name)."""
    key = "connector" if spec.get("connector") is not None or spec.get("gateway") is None else "gateway"
    return f.integer(f.mapping(spec.get(key), f"spec.{key}"), "replicas", f"spec.{key}", 2, 0, 100)


def parse_spec(spec: Mapping[str, Any]) -> TunnelSpec:
    """Turn a Tunnel's .spec into a TunnelSpec; raises SpecError."""
    try:
        return _parse(spec)
    except SpecError:
        raise
    except ConfigError as exc:  # from the shared readers: the same path and problem
        raise SpecError(exc.path, exc.problem) from None


def _parse(spec: Mapping[str, Any]) -> TunnelSpec:
    spec = f.mapping(spec, "spec")
    mode = _choice(spec, "mode", "spec", "Sidecar", (*MODES, *LEGACY_MODES))
    mode = LEGACY_MODES.get(mode, mode)
    edge_obj = f.mapping(spec.get("edge"), "spec.edge")
    urls = f.seq(edge_obj, "urls", "spec.edge")
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
        connections_per_url=_sidecar(edge_obj, "spec.edge", "edge.connectionsPerUrl"),
        token_in=_sidecar(edge_obj, "spec.edge", "edge.tokenIn"),
        ca=(
            _key_ref(edge_obj["caRef"], "spec.edge.caRef", "ConfigMap", "ca.crt")
            if edge_obj.get("caRef") is not None
            else None
        ),
        listener_groups=listener_groups(edge_obj, "listenerGroups", "spec.edge"),
    )
    routes = tuple(_route(r, f"spec.routes[{i}]") for i, r in enumerate(f.seq(spec, "routes", "spec")))
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
    metrics = f.mapping(spec.get("metrics"), "spec.metrics")
    sidecar = f.mapping(spec.get("sidecar"), "spec.sidecar")
    resources = sidecar.get("resources")
    return TunnelSpec(
        edge=edge,
        routes=routes,
        mode=mode,
        selector=selector,
        connector_replicas=_connector_replicas(spec),
        default_route=default_route,
        limits=dict(f.mapping(spec.get("limits"), "spec.limits")),
        metrics=MetricsConfig(labels=_sidecar(metrics, "spec.metrics", "metrics.labels"),
                              max_clients=_sidecar(metrics, "spec.metrics", "metrics.maxClients")),
        metrics_port=f.integer(metrics, "port", "spec.metrics", 9090, 1, 65535),
        log_level=_sidecar(spec, "spec", "logLevel"),
        drain_seconds=_sidecar(spec, "spec", "drainSeconds"),
        sidecar=SidecarOverrides(
            image=sidecar.get("image") or None,
            image_pull_policy=sidecar.get("imagePullPolicy") or None,
            resources=dict(f.mapping(resources, "spec.sidecar.resources")) if resources is not None else None,
        ),
    )
