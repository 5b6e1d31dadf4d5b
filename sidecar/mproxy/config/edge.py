"""The edge relay config schema, loaded by `mproxy edge --config FILE`.

`load_edge_config(text_or_mapping)` validates YAML text (or a parsed mapping) into a frozen `EdgeConfig`;
every error is a `ConfigError` whose message starts with the field path. Same style as the sidecar schema
(mproxy/config/sidecar.py). See docs/edge.md for the meaning of every field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mproxy.config import common as c
from mproxy.config import fields as f
from mproxy.config import schema as s
from mproxy.config.common import HttpConfig, LoggingConfig, read_http, read_logging
from mproxy.config.errors import ConfigError
from mproxy.config.fields import split_listen
from mproxy.config.replicas import EndpointSlicesSource, read_replicas_from

__all__ = [
    "ConfigError",
    "EdgeConfig",
    "EdgeHeartbeat",
    "EdgeLimits",
    "ListenerConfig",
    "PeersConfig",
    "TunnelEndpoint",
    "UdpOptions",
    "load_edge_config",
]

LISTENER_KINDS = ("tls", "http", "tcp", "udp")
TLS_REFUSALS = ("alert", "close")
EDGE_ID = re.compile(r"[A-Za-z0-9._-]{1,63}")
# The service name each listener kind puts in `connection` frames (what telebit sends).
SERVICE_OF_KIND = {"tls": "https", "http": "http", "tcp": "tcp", "udp": "udp"}
MAX_UDP_PAYLOAD = 65507  # the largest IPv4 UDP payload


@dataclass(frozen=True, slots=True)
class UdpOptions(s.Section):
    """A `kind: udp` listener's settings (docs/edge.md); each client address:port is one stream."""

    idle_timeout_seconds: float = s.number(30.0, 0.01, 86400)  # silent both ways this long: `end`
    # Larger datagrams are dropped and counted, never split.
    max_datagram_bytes: int = s.integer(MAX_UDP_PAYLOAD, 1, MAX_UDP_PAYLOAD)
    max_clients: int = s.integer(10000, 1, 1_000_000)  # client streams at once; past it new ones dropped
    datagram_rate: float = s.number(1000.0, 0.01, 10_000_000)  # per client (token bucket), both ways
    datagram_burst: int = s.integer(2000, 1, 10_000_000)
    tunnel_datagram_rate: float = s.number(100000.0, 0.01, 100_000_000)  # per tunnel on this listener


UDP_KEYS = s.keys(UdpOptions)


@dataclass(frozen=True, slots=True)
class ListenerConfig(s.Section):
    kind: str = s.custom()  # tls | http | tcp | udp
    listen: str = s.custom()  # HOST:PORT
    # The port clients see; serviceport in frames, and what tokens grant.
    public_port: int | None = s.custom(None, omit_default=True)
    proxy_protocol: bool = s.custom(False)  # expect a PROXY v1/v2 header from a trusted proxy
    udp: UdpOptions | None = s.custom(None, omit_default=True, of=UdpOptions, key="")  # kind udp only
    # kind tls: how a refused client is told: a fatal TLS alert, or a close with no TLS byte (Gateway API).
    tls_refusal: str = s.choice("alert", TLS_REFUSALS, omit_default=True)
    # Its clients go only to tunnels that asked for this group, or for none (docs/edge.md).
    group: str | None = s.custom(None, omit_default=True)

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen, "listeners[].listen")

    @property
    def service(self) -> str:
        return SERVICE_OF_KIND[self.kind]

    def to_dict(self) -> dict[str, Any]:
        out = s.to_dict(self)
        udp: dict[str, Any] = out.pop("", {})  # a udp listener's options sit beside kind and listen
        return out | udp


@dataclass(frozen=True, slots=True)
class TunnelEndpoint(s.Section):
    listen: str = s.listen("0.0.0.0:8443")
    path: str = s.string("/")
    cert_file: str | None = s.opt_string(key="tls.certFile")
    key_file: str | None = s.opt_string(key="tls.keyFile")

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen, "tunnel.listen")

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"listen": self.listen, "path": self.path}
        if self.cert_file is not None:
            out["tls"] = {"certFile": self.cert_file, "keyFile": self.key_file}
        return out


@dataclass(frozen=True, slots=True)
class EdgeLimits(s.Section):
    max_tunnels: int = s.integer(10000, 1, 1_000_000)  # WebSocket tunnels at once (authenticated or not)
    # Keyed with the sidecar's names (the old edge names are still read): streams per tunnel, and
    # concurrent connections (each one stream) per client address.
    streams_per_tunnel: int = s.integer(1000, 1, 1_000_000, key="maxStreamsPerTunnel", old="streamsPerTunnel")
    connections_per_client: int = s.integer(100, 1, 1_000_000, key="maxStreamsPerClient",
                                            old="connectionsPerClient")
    connection_rate: float = s.number(50.0, 0.01, 1_000_000)  # new connections/s per client (token bucket)
    connection_burst: int = s.integer(100, 1, 1_000_000)
    sniff_timeout_seconds: float = s.number(10.0, 0.01, 600)  # to send the ClientHello / request line
    idle_timeout_seconds: float = s.number(900.0, 0.01, 86400 * 7)
    # Pause a client (or ask the tunnel to) past this much unsent data.
    stream_buffer_bytes: int = s.integer(1048576, 1024, 64 * 1024 * 1024)
    max_frame_bytes: int = s.integer(1048576, 1024, 100 * 1024 * 1024)
    # E_BUFFER (mproxy.buffers): bytes queued for one client past `bufferSoftBytes` once its pause is
    # `bufferGraceSeconds` old, past `bufferHardBytes` at once, or for all clients of one tunnel together.
    buffer_soft_bytes: int = c.buffer_soft_bytes()
    buffer_hard_bytes: int = c.buffer_hard_bytes()
    buffer_grace_seconds: float = c.buffer_grace_seconds()
    tunnel_buffer_bytes: int = c.tunnel_buffer_bytes()
    # Accepted, not yet routed, over all listeners; oldest shed first.
    pre_routing_connections: int = s.integer(2000, 1, 1_000_000)
    ipv6_prefix_length: int = c.ipv6_prefix_length()  # per-address limits count IPv6 clients per prefix
    # Connections the kernel queues per listening socket before the edge accepts them (capped by
    # net.core.somaxconn). asyncio's default of 100 overflowed when hundreds of clients connected at once.
    listen_backlog: int = s.integer(4096, 1, 65535)


@dataclass(frozen=True, slots=True)
class EdgeHeartbeat(s.Section):
    interval_seconds: float = c.heartbeat_interval(15.0)
    timeout_seconds: float = c.heartbeat_timeout(45.0)
    auth_timeout_seconds: float = s.number(10.0, 0.01, 600)  # a tunnel must present a valid token by then


@dataclass(frozen=True, slots=True)
class PeersConfig(s.Section):
    """Forwarding between edge replicas (docs/edge.md, "Forwarding between edges")."""

    listen: str = s.required(s.Listen())  # the internal forward listener (PROXY v2 + HMAC TLV in, local only)
    hostname: str | None = s.opt_string()  # resolved to every address (a headless Service); or `addresses`
    addresses: tuple[str, ...] = s.custom((), omit_default=True)  # static peers: HOST or HOST:PORT
    port: int | None = s.custom(None, omit_default=True)  # the peers' tunnel port; None: this edge's own
    nameservers: tuple[str, ...] = s.custom((), omit_default=True)  # HOST:PORT DNS servers for `hostname`
    secret_file: str | None = s.opt_string()  # the HMAC key's source; None: auth.secretFile
    refresh_seconds: float = s.number(1.0, 0.05, 300)  # how often each peer's grants are polled
    resolve_seconds: float = s.number(10.0, 0.1, 3600)  # how often `hostname` is resolved again
    # A peer's grants not refreshed for this long are forgotten (default: max(5, 3 x refreshSeconds)).
    expire_seconds: float = s.custom(5.0)
    connect_timeout_seconds: float = s.number(2.0, 0.01, 60)  # connecting to a peer and its answer
    max_forwards: int = s.integer(1000, 1, 1_000_000)  # forwarded clients at once, each way
    clock_skew_seconds: float = s.number(10.0, 0.1, 300)  # signed requests/headers older or newer: refused

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen, "peers.listen")


@dataclass(frozen=True, slots=True)
class EdgeConfig(s.Section):
    secret_file: str = s.custom(key="auth.secretFile")
    listeners: tuple[ListenerConfig, ...] = s.custom((), of=ListenerConfig, many=True)
    tunnel: TunnelEndpoint = s.custom(factory=TunnelEndpoint, of=TunnelEndpoint)
    trusted_proxies: tuple[str, ...] = s.custom(())
    limits: EdgeLimits = s.custom(factory=EdgeLimits, of=EdgeLimits)
    heartbeat: EdgeHeartbeat = s.custom(factory=EdgeHeartbeat, of=EdgeHeartbeat)
    http: HttpConfig = s.custom(factory=HttpConfig, of=HttpConfig)
    logging: LoggingConfig = s.custom(factory=LoggingConfig, of=LoggingConfig)
    drain_seconds: float = s.number(20.0, 0, 3600)
    # This edge's identity announced to sidecars; None: $POD_NAME or hostname-pid.
    id: str | None = s.custom(None)
    # How many edges serve the same tunnels: sidecars dial until they hold this many.
    replicas: int = s.integer(1, 1, 1000)
    # A live count instead, from this edge's own headless Service (announced once read).
    replicas_from: EndpointSlicesSource | None = s.custom(None, omit_default=True)
    # Forward clients to the replica that holds their tunnel.
    peers: PeersConfig | None = s.custom(None, of=PeersConfig, omit_default=True)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id} if self.id is not None else {}
        return out | {
            "replicas": self.replicas,
            "auth": {"secretFile": self.secret_file},
            "listeners": [item.to_dict() for item in self.listeners],
            "tunnel": self.tunnel.to_dict(),
            "trustedProxies": list(self.trusted_proxies),
            "limits": self.limits.to_dict(),
            "heartbeat": self.heartbeat.to_dict(),
            "http": self.http.to_dict(),
            "logging": self.logging.to_dict(),
            "drainSeconds": self.drain_seconds,
        } | ({"replicasFrom": self.replicas_from.to_dict()} if self.replicas_from is not None else {}) | (
            {"peers": self.peers.to_dict()} if self.peers is not None else {})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.trusted_proxies)


def load_edge_config(source: str | bytes | Mapping[str, Any]) -> EdgeConfig:
    """Validate YAML text (or an already parsed mapping) into an EdgeConfig; raises ConfigError."""
    root = f.root(source)
    f.only_keys(root, "", s.keys(EdgeConfig))
    if "auth" not in root:
        raise ConfigError("auth", "is required (auth.secretFile holds the shared token secret)")
    auth = f.mapping(root["auth"], "auth")
    f.only_keys(auth, "auth", {"secretFile"})
    listeners = _listeners(root)
    tunnel = _tunnel(root)
    http = read_http(root)
    peers = _peers(root)
    _no_port_clash(listeners, tunnel, http, peers)
    limits = s.read(EdgeLimits, f.mapping(root.get("limits"), "limits"), "limits")
    c.check_buffer_limits(limits.buffer_soft_bytes, limits.buffer_hard_bytes, limits.tunnel_buffer_bytes)
    heartbeat = s.read(EdgeHeartbeat, f.mapping(root.get("heartbeat"), "heartbeat"), "heartbeat")
    c.check_heartbeat("heartbeat", heartbeat.interval_seconds, heartbeat.timeout_seconds)
    return s.read(
        EdgeConfig, root, "",
        secret_file=f.string(auth, "secretFile", "auth"),
        listeners=listeners,
        tunnel=tunnel,
        trusted_proxies=_trusted(root),
        limits=limits,
        heartbeat=heartbeat,
        http=http,
        logging=read_logging(root),
        id=_edge_id(root),
        replicas_from=read_replicas_from(root),
        peers=peers,
    )


def _peers(root: Mapping[str, Any]) -> PeersConfig | None:
    if root.get("peers") is None:
        return None
    obj = f.mapping(root["peers"], "peers")
    f.only_keys(obj, "peers", s.keys(PeersConfig))
    if "listen" not in obj:
        raise ConfigError("peers.listen", "is required (HOST:PORT of the internal listener peers forward "
                          "clients to, e.g. 0.0.0.0:8444)")
    hostname = f.opt_string(obj, "hostname", "peers")
    addresses = []
    for i, item in enumerate(f.seq(obj, "addresses", "peers")):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"peers.addresses[{i}]", f"must be HOST or HOST:PORT (got {item!r})")
        addresses.append(item.strip())
    if hostname is None and not addresses:
        raise ConfigError("peers", "needs hostname (resolved to every replica, e.g. the headless tunnel "
                          "Service) or addresses (a static list)")
    nameservers = []
    for i, item in enumerate(f.seq(obj, "nameservers", "peers")):
        ns = str(item)
        split_listen(ns if ":" in ns else f"{ns}:53", f"peers.nameservers[{i}]")
        nameservers.append(ns if ":" in ns else f"{ns}:53")
    port = f.integer(obj, "port", "peers", 0, 1, 65535) if obj.get("port") is not None else None
    refresh = s.read_field(PeersConfig, "refresh_seconds", obj, "peers")
    expire = f.number(obj, "expireSeconds", "peers", max(5.0, 3 * refresh), 0.1, 3600)
    if expire <= refresh:
        raise ConfigError("peers.expireSeconds", f"must be greater than refreshSeconds ({expire:g} <= "
                          f"{refresh:g}), or every peer would expire between two polls")
    return s.read(PeersConfig, obj, "peers", addresses=tuple(addresses), port=port,
                  nameservers=tuple(nameservers), expire_seconds=expire)


def _edge_id(root: Mapping[str, Any]) -> str | None:
    value = f.opt_string(root, "id", "")
    if value is not None and not EDGE_ID.fullmatch(value):
        raise ConfigError("id", f"must be 1-63 letters, digits, '.', '_' or '-' (got {value[:80]!r}); "
                          "it travels in an HTTP header")
    return value


def _listeners(root: Mapping[str, Any]) -> tuple[ListenerConfig, ...]:
    out: list[ListenerConfig] = []
    for i, item in enumerate(f.seq(root, "listeners", "")):
        path = f"listeners[{i}]"
        obj = f.mapping(item, path)
        f.only_keys(obj, path, s.keys(ListenerConfig) | UDP_KEYS)
        if "kind" not in obj:
            raise ConfigError(f"{path}.kind", f"is required (one of {', '.join(LISTENER_KINDS)})")
        kind = f.choice(obj, "kind", path, "tls", LISTENER_KINDS)
        listen = f.string(obj, "listen", path)
        _, port = split_listen(listen, f"{path}.listen")
        public_port = None
        if obj.get("publicPort") is not None:
            public_port = f.integer(obj, "publicPort", path, 0, 1, 65535)
        if kind in ("tcp", "udp") and port == 0 and public_port is None:
            raise ConfigError(f"{path}.publicPort", f"is required for a {kind} listener on port 0 "
                              f"(tokens grant {kind} ports by number)")
        proxy_protocol = obj.get("proxyProtocol", False)
        if not isinstance(proxy_protocol, bool):
            raise ConfigError(f"{path}.proxyProtocol", f"must be true or false (got {proxy_protocol!r})")
        if kind == "udp" and proxy_protocol:
            raise ConfigError(f"{path}.proxyProtocol", "is not supported on a udp listener (PROXY headers "
                              "come on TCP connections only)")
        udp = None
        if kind == "udp":
            udp = s.read(UdpOptions, {k: v for k, v in obj.items() if k in UDP_KEYS}, path)
        stray = sorted(UDP_KEYS & set(obj)) if kind != "udp" else []
        if stray:
            raise ConfigError(f"{path}.{stray[0]}", "applies to kind: udp listeners only")
        tls_refusal = s.read_field(ListenerConfig, "tls_refusal", obj, path)
        if "tlsRefusal" in obj and kind != "tls":
            told = "an HTTP status" if kind == "http" else "a close"
            raise ConfigError(f"{path}.tlsRefusal", f"applies to kind: tls listeners only (a {kind} "
                              f"listener's refusal is {told})")
        group = c.listener_group(obj["group"], f"{path}.group") if obj.get("group") is not None else None
        out.append(ListenerConfig(kind, listen, public_port, proxy_protocol, udp, tls_refusal, group))
    for kind in ("tcp", "udp"):
        # Tokens grant ports by number; listener groups tell two listeners of one port apart.
        ports = [(item.public_port or item.host_port[1], item.group) for item in out if item.kind == kind]
        for port, group in ports:
            if ports.count((port, group)) > 1:
                raise ConfigError("listeners", f"two {kind} listeners claim public port {port}"
                                  + (f" in group {group}" if group else "") + "; tokens could not tell "
                                  "them apart (give them different groups)")
    return tuple(out)


def _tunnel(root: Mapping[str, Any]) -> TunnelEndpoint:
    obj = f.mapping(root.get("tunnel"), "tunnel")
    cert = key = None
    if obj.get("tls") is not None:
        tls = f.mapping(obj["tls"], "tunnel.tls")
        f.only_keys(tls, "tunnel.tls", {"certFile", "keyFile"})
        cert = f.string(tls, "certFile", "tunnel.tls")
        key = f.string(tls, "keyFile", "tunnel.tls")
    tunnel = s.read(TunnelEndpoint, obj, "tunnel", cert_file=cert, key_file=key)
    if not tunnel.path.startswith("/"):
        raise ConfigError("tunnel.path", f"must start with / (got {tunnel.path!r})")
    return tunnel


def _trusted(root: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for i, cidr in enumerate(f.seq(root, "trustedProxies", "")):
        try:
            out.append(str(ipaddress.ip_network(str(cidr), strict=False)))
        except ValueError:
            raise ConfigError(f"trustedProxies[{i}]",
                              f"must be an address or CIDR such as 10.0.0.0/8 (got {cidr!r})") from None
    return tuple(out)


def _no_port_clash(listeners: tuple[ListenerConfig, ...], tunnel: TunnelEndpoint, http: HttpConfig,
                   peers: PeersConfig | None) -> None:
    seen: dict[tuple[str, str, int], str] = {}
    # UDP and TCP ports are separate spaces: a udp listener may share its port with a tcp one (DNS on 53).
    named = [(f"listeners[{i}].listen", "udp" if item.kind == "udp" else "tcp", item.host_port)
             for i, item in enumerate(listeners)]
    named += [("tunnel.listen", "tcp", tunnel.host_port), ("http.listen", "tcp", http.host_port)]
    if peers is not None:
        named.append(("peers.listen", "tcp", peers.host_port))
    for path, proto, (host, port) in named:
        if port == 0:
            continue  # the kernel picks a free port
        if (proto, host, port) in seen:
            raise ConfigError(path, f"{host}:{port} is already used by {seen[(proto, host, port)]}")
        seen[(proto, host, port)] = path
