"""The sidecar config schema: the contract between the operator (which renders it into a ConfigMap)
and `mproxy sidecar` (which loads it).

`load_sidecar_config(text_or_mapping)` validates a YAML text or a parsed mapping and returns a frozen
`SidecarConfig`; every error is a `ConfigError` whose message starts with the field path.
`SidecarConfig.to_dict()` renders the camelCase mapping back (the operator dumps it as YAML).
See docs/sidecar.md for the meaning of every field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from mproxy.config import common as c
from mproxy.config import fields as f
from mproxy.config import schema as s
from mproxy.config.common import HttpConfig, LoggingConfig, read_http, read_logging
from mproxy.config.errors import ConfigError
from mproxy.config.http_router import HttpRouterConfig, read_router_list

__all__ = [
    "BackendConfig",
    "ConfigError",
    "EdgeDialConfig",
    "HeartbeatConfig",
    "HttpConfig",
    "HttpRouterConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MatchConfig",
    "MetricsConfig",
    "ReconnectConfig",
    "RouteConfig",
    "SidecarConfig",
    "load_sidecar_config",
]

SERVICES_HINT = ("https", "http", "ssh", "tcp", "tls", "udp")
TOKEN_IN = ("header", "query", "handshake")
PROXY_PROTOCOLS = ("none", "v1", "v2")
LABEL_TIERS = ("off", "route", "client")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EdgeDialConfig(s.Section):
    """The sidecar's `edge` section: which edge relays it dials and how it authenticates (the edge role's
    own config is mproxy.config.edge.EdgeConfig)."""

    urls: tuple[str, ...] = s.custom()
    connections_per_url: int = s.integer(1, 1, 64)
    # Where edge hostnames are resolved to every edge address: HOST:PORT DNS servers, () = the system's.
    nameservers: tuple[str, ...] = s.custom((), omit_default=True)
    # Re-resolve each URL's hostname this often (and on every dial).
    resolve_seconds: float = s.number(30.0, 0.1, 3600, omit_default=True)
    # Behind one address, dial once more this often to find a new edge (0: never).
    probe_seconds: float = s.custom(30.0, omit_default=True)
    token_file: str | None = s.opt_string()
    ca_file: str | None = s.opt_string()
    token_in: str = s.choice("header", TOKEN_IN)  # how the token is sent, not a token
    # Serve only the edge listeners of these groups (() = every listener the token's grants reach).
    listener_groups: tuple[str, ...] = s.custom((), omit_default=True)


@dataclass(frozen=True, slots=True)
class MatchConfig(s.Section):
    services: tuple[str, ...] = s.custom((), omit_default=True)
    ports: tuple[int, ...] = s.custom((), omit_default=True)
    hostnames: tuple[str, ...] = s.custom((), omit_default=True)


@dataclass(frozen=True, slots=True)
class BackendConfig(s.Section):
    host: str = s.required(s.Str())
    port: int = s.required(s.Range(1, 65535, whole=True))
    connect_timeout_seconds: float = s.number(5.0, 0.001, 300)
    proxy_protocol: str = s.choice("none", PROXY_PROTOCOLS)
    # Its share of the route's new streams: weight / the sum of the route's weights (0: none).
    weight: int = s.integer(1, 0, 1_000_000, omit_default=True)
    # This share of streams is refused (an invalid backend); such an entry has no host or port.
    refuse: bool = s.flag(False, omit_default=True)

    @classmethod
    def refused(cls, weight: int) -> BackendConfig:
        """A `{weight, refuse: true}` entry: host and port are never dialled, placeholders so that every
        BackendConfig has the same shape."""
        return cls(host="-", port=1, weight=weight, refuse=True)

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "refuse": True} if self.refuse else s.to_dict(self)


@dataclass(frozen=True, slots=True)
class RouteConfig(s.Section):
    """A stream route: `backend` (one) or `backends` (weighted; exactly one of the two is given)."""

    name: str = s.required(s.Str())
    backend: BackendConfig | None = s.custom(None, of=BackendConfig)
    backends: tuple[BackendConfig, ...] = s.custom((), of=BackendConfig, many=True)
    match: MatchConfig = s.custom(factory=MatchConfig, of=MatchConfig)
    http: str | None = s.opt_string()  # the httpRouters entry that serves these streams

    @property
    def targets(self) -> tuple[BackendConfig, ...]:
        """Every backend of the route, weighted (`backend` alone is weight 1)."""
        return self.backends if self.backend is None else (self.backend,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "match": self.match.to_dict()}
        if self.backend is not None:
            out["backend"] = self.backend.to_dict()
        elif self.backends:
            out["backends"] = [b.to_dict() for b in self.backends]
        if self.http is not None:
            out["http"] = self.http
        return out


class SendBuffer(s.Spec):
    """limits.tunnelSendBufferBytes: "auto" (None: sized from the measured RTT), 0 (kernel autotuning)
    or a fixed SO_SNDBUF."""

    __slots__ = ()
    LO, HI = 4096, 64 << 20

    def read(self, obj: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
        value = obj.get(key, "auto")
        if value == "auto" or value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not (value == 0 or
                                                                          self.LO <= value <= self.HI):
            raise ConfigError(f.join(path, key), f'must be "auto", 0 (kernel autotuning) or '
                              f"{self.LO}-{self.HI} (got {value!r})")
        return value

    def dump(self, value: Any) -> Any:
        return "auto" if value is None else value

    def json_schema(self) -> dict[str, Any]:
        return {"x-kubernetes-int-or-string": True}


@dataclass(frozen=True, slots=True)
class LimitsConfig(s.Section):
    max_streams_per_tunnel: int = s.integer(1000, 1, 1_000_000)
    # Per client address (IPv6: per ipv6PrefixLength network) per tunnel connection.
    max_streams_per_client: int = s.integer(100, 1, 1_000_000)
    idle_timeout_seconds: float = s.number(900.0, 0.01, 86400 * 7)
    max_frame_bytes: int = s.integer(1048576, 1024, 100 * 1024 * 1024)
    # A backend whose unsent data passes this asks the relay to pause that client.
    stream_buffer_bytes: int = s.integer(262144, 1024, 64 * 1024 * 1024)
    tunnel_send_buffer_bytes: int | None = field(default=None, metadata={s.SPEC: SendBuffer()})
    # E_BUFFER (mproxy.buffers), the edge's keys and defaults: bytes queued for one backend past
    # `bufferSoftBytes` once its pause is `bufferGraceSeconds` old, past `bufferHardBytes` at once, or for
    # all backends of one tunnel together past `tunnelBufferBytes`.
    buffer_soft_bytes: int = c.buffer_soft_bytes()
    buffer_hard_bytes: int = c.buffer_hard_bytes()
    buffer_grace_seconds: float = c.buffer_grace_seconds()
    tunnel_buffer_bytes: int = c.tunnel_buffer_bytes()
    ipv6_prefix_length: int = c.ipv6_prefix_length()
    udp_idle_timeout_seconds: float = s.number(30.0, 0.01, 86400)  # a UDP client's silent stream is ended


@dataclass(frozen=True, slots=True)
class HeartbeatConfig(s.Section):
    interval_seconds: float = c.heartbeat_interval(10.0)
    timeout_seconds: float = c.heartbeat_timeout(30.0)


@dataclass(frozen=True, slots=True)
class ReconnectConfig(s.Section):
    initial_seconds: float = s.number(0.1, 0.001, 3600)
    max_seconds: float = s.number(30.0, 0.01, 86400)
    fast_window_seconds: float = s.number(5.0, 0, 60)


@dataclass(frozen=True, slots=True)
class MetricsConfig(s.Section):
    labels: str = s.choice("client", LABEL_TIERS)
    max_clients: int = s.integer(200, 1, 100_000)


@dataclass(frozen=True, slots=True)
class SidecarConfig(s.Section):
    edge: EdgeDialConfig = s.custom(of=EdgeDialConfig)
    routes: tuple[RouteConfig, ...] = s.custom((), of=RouteConfig, many=True)
    http_routers: tuple[HttpRouterConfig, ...] = s.custom((), of=HttpRouterConfig, many=True)
    default_route: str | None = s.custom(None)
    limits: LimitsConfig = s.custom(factory=LimitsConfig, of=LimitsConfig)
    heartbeat: HeartbeatConfig = s.custom(factory=HeartbeatConfig, of=HeartbeatConfig)
    reconnect: ReconnectConfig = s.custom(factory=ReconnectConfig, of=ReconnectConfig)
    metrics: MetricsConfig = s.custom(factory=MetricsConfig, of=MetricsConfig)
    http: HttpConfig = s.custom(factory=HttpConfig, of=HttpConfig)
    logging: LoggingConfig = s.custom(factory=LoggingConfig, of=LoggingConfig)
    drain_seconds: float = s.number(20.0, 0, 3600)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def route(self, name: str) -> RouteConfig | None:
        return next((r for r in self.routes if r.name == name), None)


def _section(cls: type[T], root: Mapping[str, Any], key: str) -> T:
    return s.read(cls, f.mapping(root.get(key), key), key)


def load_sidecar_config(source: str | bytes | Mapping[str, Any]) -> SidecarConfig:
    """Validate YAML text (or an already parsed mapping) into a SidecarConfig; raises ConfigError."""
    root = f.root(source)
    f.only_keys(root, "", s.keys(SidecarConfig))
    routers = read_router_list(root)
    routes = _routes(root, {r.name for r in routers})
    default_route = f.opt_string(root, "defaultRoute", "")
    if default_route is not None and default_route not in {r.name for r in routes}:
        raise ConfigError("defaultRoute", f"names no route (got {default_route!r}; routes: "
                          f"{', '.join(r.name for r in routes) or 'none'})")
    limits = _section(LimitsConfig, root, "limits")
    c.check_buffer_limits(limits.buffer_soft_bytes, limits.buffer_hard_bytes, limits.tunnel_buffer_bytes)
    heartbeat = _section(HeartbeatConfig, root, "heartbeat")
    c.check_heartbeat("heartbeat", heartbeat.interval_seconds, heartbeat.timeout_seconds)
    reconnect = _section(ReconnectConfig, root, "reconnect")
    if reconnect.max_seconds < reconnect.initial_seconds:
        raise ConfigError("reconnect.maxSeconds", f"must be >= initialSeconds ({reconnect.max_seconds:g} < "
                          f"{reconnect.initial_seconds:g})")
    return s.read(
        SidecarConfig, root, "",
        edge=_edge(root),
        routes=routes,
        http_routers=routers,
        default_route=default_route,
        limits=limits,
        heartbeat=heartbeat,
        reconnect=reconnect,
        metrics=_section(MetricsConfig, root, "metrics"),
        http=read_http(root),
        logging=read_logging(root),
    )


def _edge(root: Mapping[str, Any]) -> EdgeDialConfig:
    if "edge" not in root:
        raise ConfigError("edge", "is required (edge.urls lists the edge relay WebSocket URLs)")
    obj = f.mapping(root["edge"], "edge")
    f.only_keys(obj, "edge", s.keys(EdgeDialConfig))
    urls = f.seq(obj, "urls", "edge")
    if not urls:
        raise ConfigError("edge.urls", "needs at least one ws:// or wss:// URL")
    for i, url in enumerate(urls):
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")) or len(url) < 6:
            raise ConfigError(f"edge.urls[{i}]", f"must be a ws:// or wss:// URL (got {url!r})")
    return s.read(EdgeDialConfig, obj, "edge", urls=tuple(urls), nameservers=_nameservers(obj),
                  probe_seconds=_probe_seconds(obj),
                  listener_groups=c.listener_groups(obj, "listenerGroups", "edge"))


def _probe_seconds(obj: Mapping[str, Any]) -> float:
    value = f.number(obj, "probeSeconds", "edge", 30.0, 0, 3600)
    if 0 < value < 0.1:
        raise ConfigError("edge.probeSeconds", f"must be 0 (never) or 0.1-3600 (got {value:g})")
    return value


def _nameservers(obj: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(f.seq(obj, "nameservers", "edge")):
        path = f"edge.nameservers[{i}]"
        text = str(item)
        try:
            host, port = (text, 53) if _is_ip(text) else f.split_listen(text, path)
            ipaddress.ip_address(host)
        except (ConfigError, ValueError):
            raise ConfigError(path, f"must be a DNS server address such as 10.96.0.10 or 127.0.0.1:5353 "
                              f"(got {text[:80]!r})") from None
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return tuple(out)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _hostname(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"must be a host name such as example.com or *.example.com (got {value!r})")
    name = value.lower().rstrip(".")
    body = name[2:] if name.startswith("*.") else name
    labels = body.split(".")
    if not body or any(not lbl or len(lbl) > 63 for lbl in labels) or any(
        not (c.isalnum() or c in "-_") for c in body.replace(".", "")
    ):
        raise ConfigError(path, f"must be a host name such as example.com or *.example.com (got {value!r})")
    return name


def _routes(root: Mapping[str, Any], routers: set[str]) -> tuple[RouteConfig, ...]:
    out: list[RouteConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(f.seq(root, "routes", "")):
        path = f"routes[{i}]"
        obj = f.mapping(item, path)
        f.only_keys(obj, path, s.keys(RouteConfig))
        name = f.string(obj, "name", path)
        if name in seen:
            raise ConfigError(f"{path}.name", f"duplicate route name {name!r}: names must be unique")
        seen.add(name)
        m = f.mapping(obj.get("match"), f"{path}.match")
        f.only_keys(m, f"{path}.match", s.keys(MatchConfig))
        services = []
        for j, svc in enumerate(f.seq(m, "services", f"{path}.match")):
            if not isinstance(svc, str) or not svc or "," in svc:
                raise ConfigError(f"{path}.match.services[{j}]",
                                  f"must be a service name such as {', '.join(SERVICES_HINT)} (got {svc!r})")
            services.append(svc.lower())
        ports = []
        for j, port in enumerate(f.seq(m, "ports", f"{path}.match")):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ConfigError(f"{path}.match.ports[{j}]", f"must be 1-65535 (got {port!r})")
            ports.append(port)
        hostnames = [
            _hostname(h, f"{path}.match.hostnames[{j}]")
            for j, h in enumerate(f.seq(m, "hostnames", f"{path}.match"))
        ]
        http = f.opt_string(obj, "http", path)
        backend: BackendConfig | None = None
        backends: tuple[BackendConfig, ...] = ()
        if http is not None:
            for key in ("backend", "backends"):
                if key in obj:
                    raise ConfigError(f"{path}.{key}", "must not be set with http (the HTTP router "
                                      f"{http!r} picks the backend of each request)")
            if http not in routers:
                raise ConfigError(f"{path}.http", f"names no httpRouters entry (got {http!r}; routers: "
                                  f"{', '.join(sorted(routers)) or 'none'})")
            if "udp" in services:
                raise ConfigError(f"{path}.http", "must not be set on a udp route (HTTP needs a byte stream)")
        else:
            backend, backends = _backends(obj, path)
            if "udp" in services:
                _udp_route(path, backend, backends, hostnames)
        out.append(RouteConfig(name=name, backend=backend, backends=backends,
                               match=MatchConfig(tuple(services), tuple(ports), tuple(hostnames)), http=http))
    return tuple(out)


MAX_BACKENDS = 64  # per route (Gateway API allows 16 backendRefs per rule)


def _backends(obj: Mapping[str, Any], path: str) -> tuple[BackendConfig | None, tuple[BackendConfig, ...]]:
    """A route's `backend` (one) or `backends` (weighted): exactly one of them."""
    if "backend" in obj and "backends" in obj:
        raise ConfigError(f"{path}.backends", "give backend (one) or backends (weighted), not both")
    if "backend" not in obj and "backends" not in obj:
        raise ConfigError(f"{path}.backend", "is required (host and port of the Service), or backends (a "
                          "weighted list of them), or http (the name of an httpRouters entry)")
    if "backend" in obj:
        return _backend(obj["backend"], f"{path}.backend"), ()
    items = f.seq(obj, "backends", path)
    if not items:
        raise ConfigError(f"{path}.backends", "needs at least one backend (host, port and weight), or a "
                          "{weight: 1, refuse: true} entry to refuse the route's streams")
    if len(items) > MAX_BACKENDS:
        raise ConfigError(f"{path}.backends", f"has {len(items)} entries; at most {MAX_BACKENDS}")
    return None, tuple(_backend(item, f"{path}.backends[{i}]") for i, item in enumerate(items))


def _backend(item: object, path: str) -> BackendConfig:
    obj = f.mapping(item, path)
    refuse = s.read_field(BackendConfig, "refuse", obj, path)
    if not refuse:
        return s.read(BackendConfig, obj, path)
    stray = sorted(set(obj) - {"weight", "refuse"})
    if stray:
        raise ConfigError(f.join(path, stray[0]), "does not apply to a refuse: true backend (it stands for "
                          "a share of streams that is refused; give it only a weight)")
    return BackendConfig.refused(s.read_field(BackendConfig, "weight", obj, path))


def _udp_route(path: str, backend: BackendConfig | None, backends: tuple[BackendConfig, ...],
               hostnames: list[str]) -> None:
    """What a udp route cannot do (mproxy/sidecar/udp_backend.py): it would silently never apply."""
    named = [(f"{path}.backend", backend)] if backend is not None else [
        (f"{path}.backends[{i}]", b) for i, b in enumerate(backends)]
    for where, b in named:
        if b.proxy_protocol != "none":
            raise ConfigError(f"{where}.proxyProtocol", "must be none for a udp route (PROXY headers are "
                              "sent on TCP connections only)")
    if hostnames:
        raise ConfigError(f"{path}.match.hostnames", "must be empty for a udp route (UDP clients carry no "
                          "name, so it would never match)")
