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
from typing import Any

import yaml

from mproxy.config import fields as f
from mproxy.config.common import (
    BUFFER_KEYS,
    HttpConfig,
    LoggingConfig,
    read_buffer_limits,
    read_http,
    read_logging,
)
from mproxy.config.errors import ConfigError

__all__ = [
    "BackendConfig",
    "ConfigError",
    "EdgeConfig",
    "HeartbeatConfig",
    "HttpConfig",
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


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    urls: tuple[str, ...]
    connections_per_url: int = 1
    token_file: str | None = None
    ca_file: str | None = None
    token_in: str = "header"  # noqa: S105 (how the token is sent, not a token)
    # Where edge hostnames are resolved to every edge address: HOST:PORT DNS servers, () = the system's.
    nameservers: tuple[str, ...] = ()
    resolve_seconds: float = 30.0  # re-resolve each URL's hostname this often (and on every dial)
    probe_seconds: float = 30.0  # behind one address, dial once more this often for a new edge (0: never)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"urls": list(self.urls), "connectionsPerUrl": self.connections_per_url}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.resolve_seconds != 30.0:
            out["resolveSeconds"] = self.resolve_seconds
        if self.probe_seconds != 30.0:
            out["probeSeconds"] = self.probe_seconds
        if self.token_file is not None:
            out["tokenFile"] = self.token_file
        if self.ca_file is not None:
            out["caFile"] = self.ca_file
        out["tokenIn"] = self.token_in
        return out


@dataclass(frozen=True, slots=True)
class MatchConfig:
    services: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    hostnames: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.services:
            out["services"] = list(self.services)
        if self.ports:
            out["ports"] = list(self.ports)
        if self.hostnames:
            out["hostnames"] = list(self.hostnames)
        return out


@dataclass(frozen=True, slots=True)
class BackendConfig:
    host: str
    port: int
    connect_timeout_seconds: float = 5.0
    proxy_protocol: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "connectTimeoutSeconds": self.connect_timeout_seconds,
            "proxyProtocol": self.proxy_protocol,
        }


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    backend: BackendConfig
    match: MatchConfig = field(default_factory=MatchConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "match": self.match.to_dict(), "backend": self.backend.to_dict()}


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_streams_per_tunnel: int = 1000
    max_streams_per_client: int = 100
    idle_timeout_seconds: float = 900.0
    max_frame_bytes: int = 1048576
    # A backend whose unsent data passes this asks the relay to pause that client.
    stream_buffer_bytes: int = 262144
    # None = "auto" (sized from the measured RTT), 0 = kernel autotuning, else a fixed SO_SNDBUF.
    tunnel_send_buffer_bytes: int | None = None
    # E_BUFFER (mproxy.buffers), the edge's keys and defaults: bytes queued for one backend past
    # `bufferSoftBytes` once its pause is `bufferGraceSeconds` old, past `bufferHardBytes` at once, or for
    # all backends of one tunnel together past `tunnelBufferBytes`.
    buffer_soft_bytes: int = 8 * 1024 * 1024
    buffer_hard_bytes: int = 64 * 1024 * 1024
    buffer_grace_seconds: float = 2.0
    tunnel_buffer_bytes: int = 256 * 1024 * 1024
    ipv6_prefix_length: int = 64  # maxStreamsPerClient counts IPv6 clients per prefix of this length
    udp_idle_timeout_seconds: float = 30.0  # a UDP client's stream silent both ways this long is ended

    def to_dict(self) -> dict[str, Any]:
        return {
            "maxStreamsPerTunnel": self.max_streams_per_tunnel,
            "maxStreamsPerClient": self.max_streams_per_client,
            "idleTimeoutSeconds": self.idle_timeout_seconds,
            "maxFrameBytes": self.max_frame_bytes,
            "streamBufferBytes": self.stream_buffer_bytes,
            "tunnelSendBufferBytes": "auto" if self.tunnel_send_buffer_bytes is None
            else self.tunnel_send_buffer_bytes,
            "bufferSoftBytes": self.buffer_soft_bytes,
            "bufferHardBytes": self.buffer_hard_bytes,
            "bufferGraceSeconds": self.buffer_grace_seconds,
            "tunnelBufferBytes": self.tunnel_buffer_bytes,
            "ipv6PrefixLength": self.ipv6_prefix_length,
            "udpIdleTimeoutSeconds": self.udp_idle_timeout_seconds,
        }


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    interval_seconds: float = 10.0
    timeout_seconds: float = 30.0

    def to_dict(self) -> dict[str, Any]:
        return {"intervalSeconds": self.interval_seconds, "timeoutSeconds": self.timeout_seconds}


@dataclass(frozen=True, slots=True)
class ReconnectConfig:
    initial_seconds: float = 0.1
    max_seconds: float = 30.0
    fast_window_seconds: float = 5.0

    def to_dict(self) -> dict[str, Any]:
        return {"initialSeconds": self.initial_seconds, "maxSeconds": self.max_seconds,
                "fastWindowSeconds": self.fast_window_seconds}


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    labels: str = "client"
    max_clients: int = 200

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "maxClients": self.max_clients}


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    edge: EdgeConfig
    routes: tuple[RouteConfig, ...] = ()
    default_route: str | None = None
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    drain_seconds: float = 20.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "edge": self.edge.to_dict(),
            "routes": [r.to_dict() for r in self.routes],
            "defaultRoute": self.default_route,
            "limits": self.limits.to_dict(),
            "heartbeat": self.heartbeat.to_dict(),
            "reconnect": self.reconnect.to_dict(),
            "metrics": self.metrics.to_dict(),
            "http": self.http.to_dict(),
            "logging": self.logging.to_dict(),
            "drainSeconds": self.drain_seconds,
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def route(self, name: str) -> RouteConfig | None:
        return next((r for r in self.routes if r.name == name), None)


def load_sidecar_config(source: str | bytes | Mapping[str, Any]) -> SidecarConfig:
    """Validate YAML text (or an already parsed mapping) into a SidecarConfig; raises ConfigError."""
    root = f.root(source)
    f.only_keys(
        root,
        "",
        {"edge", "routes", "defaultRoute", "limits", "heartbeat", "reconnect", "metrics", "http",
         "logging", "drainSeconds"},
    )
    routes = _routes(root)
    default_route = f.opt_string(root, "defaultRoute", "")
    if default_route is not None and default_route not in {r.name for r in routes}:
        raise ConfigError("defaultRoute", f"names no route (got {default_route!r}; routes: "
                          f"{', '.join(r.name for r in routes) or 'none'})")
    return SidecarConfig(
        edge=_edge(root),
        routes=routes,
        default_route=default_route,
        limits=_limits(root),
        heartbeat=_heartbeat(root),
        reconnect=_reconnect(root),
        metrics=_metrics(root),
        http=read_http(root),
        logging=read_logging(root),
        drain_seconds=f.number(root, "drainSeconds", "", 20.0, 0, 3600),
    )


def _edge(root: Mapping[str, Any]) -> EdgeConfig:
    if "edge" not in root:
        raise ConfigError("edge", "is required (edge.urls lists the edge relay WebSocket URLs)")
    obj = f.mapping(root["edge"], "edge")
    f.only_keys(obj, "edge", {"urls", "connectionsPerUrl", "tokenFile", "caFile", "tokenIn", "nameservers",
                              "resolveSeconds", "probeSeconds"})
    urls = f.seq(obj, "urls", "edge")
    if not urls:
        raise ConfigError("edge.urls", "needs at least one ws:// or wss:// URL")
    for i, url in enumerate(urls):
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")) or len(url) < 6:
            raise ConfigError(f"edge.urls[{i}]", f"must be a ws:// or wss:// URL (got {url!r})")
    return EdgeConfig(
        urls=tuple(urls),
        connections_per_url=f.integer(obj, "connectionsPerUrl", "edge", 1, 1, 64),
        token_file=f.opt_string(obj, "tokenFile", "edge"),
        ca_file=f.opt_string(obj, "caFile", "edge"),
        token_in=f.choice(obj, "tokenIn", "edge", "header", TOKEN_IN),
        nameservers=_nameservers(obj),
        resolve_seconds=f.number(obj, "resolveSeconds", "edge", 30.0, 0.1, 3600),
        probe_seconds=_probe_seconds(obj),
    )


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


def _routes(root: Mapping[str, Any]) -> tuple[RouteConfig, ...]:
    out: list[RouteConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(f.seq(root, "routes", "")):
        path = f"routes[{i}]"
        obj = f.mapping(item, path)
        f.only_keys(obj, path, {"name", "match", "backend"})
        name = f.string(obj, "name", path)
        if name in seen:
            raise ConfigError(f"{path}.name", f"duplicate route name {name!r}: names must be unique")
        seen.add(name)
        m = f.mapping(obj.get("match"), f"{path}.match")
        f.only_keys(m, f"{path}.match", {"services", "ports", "hostnames"})
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
        if "backend" not in obj:
            raise ConfigError(f"{path}.backend", "is required (host and port of the Service)")
        b = f.mapping(obj["backend"], f"{path}.backend")
        bpath = f"{path}.backend"
        f.only_keys(b, bpath, {"host", "port", "connectTimeoutSeconds", "proxyProtocol"})
        if "port" not in b:
            raise ConfigError(f"{bpath}.port", "is required")
        backend = BackendConfig(
            host=f.string(b, "host", bpath),
            port=f.integer(b, "port", bpath, 0, 1, 65535),
            connect_timeout_seconds=f.number(b, "connectTimeoutSeconds", bpath, 5.0, 0.001, 300),
            proxy_protocol=f.choice(b, "proxyProtocol", bpath, "none", PROXY_PROTOCOLS),
        )
        if "udp" in services:
            _udp_route(path, backend, hostnames)
        out.append(RouteConfig(name=name, backend=backend,
                               match=MatchConfig(tuple(services), tuple(ports), tuple(hostnames))))
    return tuple(out)


def _udp_route(path: str, backend: BackendConfig, hostnames: list[str]) -> None:
    """What a udp route cannot do (mproxy/sidecar/udp_backend.py): it would silently never apply."""
    if backend.proxy_protocol != "none":
        raise ConfigError(f"{path}.backend.proxyProtocol", "must be none for a udp route (PROXY headers are "
                          "sent on TCP connections only)")
    if hostnames:
        raise ConfigError(f"{path}.match.hostnames", "must be empty for a udp route (UDP clients carry no "
                          "name, so it would never match)")


def _limits(root: Mapping[str, Any]) -> LimitsConfig:
    obj = f.mapping(root.get("limits"), "limits")
    f.only_keys(obj, "limits", {"maxStreamsPerTunnel", "maxStreamsPerClient", "idleTimeoutSeconds",
                                "maxFrameBytes", "streamBufferBytes", "tunnelSendBufferBytes",
                                "udpIdleTimeoutSeconds", *BUFFER_KEYS})
    return LimitsConfig(
        **read_buffer_limits(obj),  # the edge's names, defaults, ranges and checks
        max_streams_per_tunnel=f.integer(obj, "maxStreamsPerTunnel", "limits", 1000, 1, 1_000_000),
        max_streams_per_client=f.integer(obj, "maxStreamsPerClient", "limits", 100, 1, 1_000_000),
        idle_timeout_seconds=f.number(obj, "idleTimeoutSeconds", "limits", 900.0, 0.01, 86400 * 7),
        max_frame_bytes=f.integer(obj, "maxFrameBytes", "limits", 1048576, 1024, 100 * 1024 * 1024),
        stream_buffer_bytes=f.integer(obj, "streamBufferBytes", "limits", 262144, 1024, 64 * 1024 * 1024),
        tunnel_send_buffer_bytes=_send_buffer(obj),
        udp_idle_timeout_seconds=f.number(obj, "udpIdleTimeoutSeconds", "limits", 30.0, 0.01, 86400),
    )


def _send_buffer(obj: Mapping[str, Any]) -> int | None:
    value = obj.get("tunnelSendBufferBytes", "auto")
    if value == "auto" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not (value == 0 or 4096 <= value <= 64 << 20):
        raise ConfigError("limits.tunnelSendBufferBytes",
                          f'must be "auto", 0 (kernel autotuning) or 4096-67108864 (got {value!r})')
    return value


def _heartbeat(root: Mapping[str, Any]) -> HeartbeatConfig:
    obj = f.mapping(root.get("heartbeat"), "heartbeat")
    f.only_keys(obj, "heartbeat", {"intervalSeconds", "timeoutSeconds"})
    return HeartbeatConfig(*f.heartbeat(obj, "heartbeat", 10.0, 30.0))


def _reconnect(root: Mapping[str, Any]) -> ReconnectConfig:
    obj = f.mapping(root.get("reconnect"), "reconnect")
    f.only_keys(obj, "reconnect", {"initialSeconds", "maxSeconds", "fastWindowSeconds"})
    initial = f.number(obj, "initialSeconds", "reconnect", 0.1, 0.001, 3600)
    cap = f.number(obj, "maxSeconds", "reconnect", 30.0, 0.01, 86400)
    if cap < initial:
        raise ConfigError("reconnect.maxSeconds", f"must be >= initialSeconds ({cap:g} < {initial:g})")
    fast = f.number(obj, "fastWindowSeconds", "reconnect", 5.0, 0, 60)
    return ReconnectConfig(initial, cap, fast)


def _metrics(root: Mapping[str, Any]) -> MetricsConfig:
    obj = f.mapping(root.get("metrics"), "metrics")
    f.only_keys(obj, "metrics", {"labels", "maxClients"})
    return MetricsConfig(
        labels=f.choice(obj, "labels", "metrics", "client", LABEL_TIERS),
        max_clients=f.integer(obj, "maxClients", "metrics", 200, 1, 100_000),
    )

