"""The edge relay config schema, loaded by `mproxy edge --config FILE`.

`load_edge_config(text_or_mapping)` validates YAML text (or a parsed mapping) into a frozen `EdgeConfig`;
every error is a `ConfigError` whose message starts with the field path. Same style as the sidecar schema
(mproxy/config/sidecar.py). See docs/edge.md for the meaning of every field.
"""

from __future__ import annotations

import ipaddress
import re
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
from mproxy.config.fields import split_listen

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
EDGE_ID = re.compile(r"[A-Za-z0-9._-]{1,63}")
# The service name each listener kind puts in `connection` frames (what telebit sends).
SERVICE_OF_KIND = {"tls": "https", "http": "http", "tcp": "tcp", "udp": "udp"}
UDP_KEYS = {"idleTimeoutSeconds", "maxDatagramBytes", "maxClients", "datagramRate", "datagramBurst",
            "tunnelDatagramRate"}
MAX_UDP_PAYLOAD = 65507  # the largest IPv4 UDP payload


@dataclass(frozen=True, slots=True)
class UdpOptions:
    """A `kind: udp` listener's settings (docs/edge.md); each client address:port is one stream."""

    idle_timeout_seconds: float = 30.0  # a client silent both ways this long is ended with `end`
    max_datagram_bytes: int = MAX_UDP_PAYLOAD  # larger datagrams are dropped and counted, never split
    max_clients: int = 10000  # client streams at once on this listener; past it new clients are dropped
    datagram_rate: float = 1000.0  # datagrams per second per client (token bucket), both directions
    datagram_burst: int = 2000
    tunnel_datagram_rate: float = 100000.0  # datagrams per second per tunnel on this listener

    def to_dict(self) -> dict[str, Any]:
        return {"idleTimeoutSeconds": self.idle_timeout_seconds, "maxDatagramBytes": self.max_datagram_bytes,
                "maxClients": self.max_clients, "datagramRate": self.datagram_rate,
                "datagramBurst": self.datagram_burst, "tunnelDatagramRate": self.tunnel_datagram_rate}


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    kind: str  # tls | http | tcp | udp
    listen: str  # HOST:PORT
    public_port: int | None = None  # the port clients see; serviceport in frames, and what tokens grant
    proxy_protocol: bool = False  # expect a PROXY v1/v2 header from a trusted proxy
    udp: UdpOptions | None = None  # kind udp only

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen, "listeners[].listen")

    @property
    def service(self) -> str:
        return SERVICE_OF_KIND[self.kind]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "listen": self.listen}
        if self.public_port is not None:
            out["publicPort"] = self.public_port
        out["proxyProtocol"] = self.proxy_protocol
        if self.udp is not None:
            out.update(self.udp.to_dict())
        return out


@dataclass(frozen=True, slots=True)
class TunnelEndpoint:
    listen: str = "0.0.0.0:8443"
    path: str = "/"
    cert_file: str | None = None
    key_file: str | None = None

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
class EdgeLimits:
    streams_per_tunnel: int = 1000
    connections_per_client: int = 100  # concurrent connections from one client address
    connection_rate: float = 50.0  # new connections per second per client address (token bucket)
    connection_burst: int = 100
    sniff_timeout_seconds: float = 10.0  # time a client has to send its ClientHello / request line
    idle_timeout_seconds: float = 900.0
    stream_buffer_bytes: int = 1048576  # pause a client (or ask the tunnel to) past this much unsent data
    max_frame_bytes: int = 1048576
    max_tunnels: int = 10000  # WebSocket tunnels at once (authenticated or still within authTimeout)
    # E_BUFFER (mproxy.buffers): bytes queued for one client past `bufferSoftBytes` once its pause is
    # `bufferGraceSeconds` old, past `bufferHardBytes` at once, or for all clients of one tunnel together.
    buffer_soft_bytes: int = 8 * 1024 * 1024
    buffer_hard_bytes: int = 64 * 1024 * 1024
    buffer_grace_seconds: float = 2.0
    tunnel_buffer_bytes: int = 256 * 1024 * 1024
    pre_routing_connections: int = 2000  # accepted, not yet routed, over all listeners; oldest shed first
    ipv6_prefix_length: int = 64  # per-address limits count IPv6 clients per prefix of this length
    # Connections the kernel queues per listening socket before the edge accepts them (capped by
    # net.core.somaxconn). asyncio's default of 100 overflowed when hundreds of clients connected at once.
    listen_backlog: int = 4096

    def to_dict(self) -> dict[str, Any]:
        return {
            "maxTunnels": self.max_tunnels,
            "streamsPerTunnel": self.streams_per_tunnel,
            "connectionsPerClient": self.connections_per_client,
            "connectionRate": self.connection_rate,
            "connectionBurst": self.connection_burst,
            "sniffTimeoutSeconds": self.sniff_timeout_seconds,
            "idleTimeoutSeconds": self.idle_timeout_seconds,
            "streamBufferBytes": self.stream_buffer_bytes,
            "maxFrameBytes": self.max_frame_bytes,
            "bufferSoftBytes": self.buffer_soft_bytes,
            "bufferHardBytes": self.buffer_hard_bytes,
            "bufferGraceSeconds": self.buffer_grace_seconds,
            "tunnelBufferBytes": self.tunnel_buffer_bytes,
            "preRoutingConnections": self.pre_routing_connections,
            "ipv6PrefixLength": self.ipv6_prefix_length,
            "listenBacklog": self.listen_backlog,
        }


@dataclass(frozen=True, slots=True)
class EdgeHeartbeat:
    interval_seconds: float = 15.0
    timeout_seconds: float = 45.0
    auth_timeout_seconds: float = 10.0  # a tunnel must present a valid token within this

    def to_dict(self) -> dict[str, Any]:
        return {
            "intervalSeconds": self.interval_seconds,
            "timeoutSeconds": self.timeout_seconds,
            "authTimeoutSeconds": self.auth_timeout_seconds,
        }


@dataclass(frozen=True, slots=True)
class PeersConfig:
    """Forwarding between edge replicas (docs/edge.md, "Forwarding between edges")."""

    listen: str  # the internal forward listener (PROXY v2 + HMAC TLV in, local tunnels only)
    hostname: str | None = None  # resolved to every address (a headless Service); or `addresses`
    addresses: tuple[str, ...] = ()  # static peers: HOST or HOST:PORT of their tunnel endpoint
    port: int | None = None  # the peers' tunnel port; None: this edge's own tunnel port
    nameservers: tuple[str, ...] = ()  # HOST:PORT DNS servers for `hostname`; empty: the system resolver
    secret_file: str | None = None  # the HMAC key's source; None: auth.secretFile
    refresh_seconds: float = 1.0  # how often each peer's grants are polled
    resolve_seconds: float = 10.0  # how often `hostname` is resolved again
    expire_seconds: float = 5.0  # a peer's grants not refreshed for this long are forgotten
    connect_timeout_seconds: float = 2.0  # connecting to a peer and hearing its answer, per attempt
    max_forwards: int = 1000  # forwarded clients at once, each way
    clock_skew_seconds: float = 10.0  # a signed request or header older or newer than this is refused

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen, "peers.listen")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"listen": self.listen}
        if self.hostname is not None:
            out["hostname"] = self.hostname
        if self.addresses:
            out["addresses"] = list(self.addresses)
        if self.port is not None:
            out["port"] = self.port
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.secret_file is not None:
            out["secretFile"] = self.secret_file
        return out | {
            "refreshSeconds": self.refresh_seconds,
            "resolveSeconds": self.resolve_seconds,
            "expireSeconds": self.expire_seconds,
            "connectTimeoutSeconds": self.connect_timeout_seconds,
            "maxForwards": self.max_forwards,
            "clockSkewSeconds": self.clock_skew_seconds,
        }


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    secret_file: str
    listeners: tuple[ListenerConfig, ...] = ()
    tunnel: TunnelEndpoint = field(default_factory=TunnelEndpoint)
    trusted_proxies: tuple[str, ...] = ()
    limits: EdgeLimits = field(default_factory=EdgeLimits)
    heartbeat: EdgeHeartbeat = field(default_factory=EdgeHeartbeat)
    http: HttpConfig = field(default_factory=HttpConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    drain_seconds: float = 20.0
    id: str | None = None  # this edge's identity announced to sidecars; None: $POD_NAME or hostname-pid
    replicas: int = 1  # how many edges serve the same tunnels: sidecars dial until they hold this many
    peers: PeersConfig | None = None  # forward clients to the replica that holds their tunnel

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
        } | ({"peers": self.peers.to_dict()} if self.peers is not None else {})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.trusted_proxies)


def load_edge_config(source: str | bytes | Mapping[str, Any]) -> EdgeConfig:
    """Validate YAML text (or an already parsed mapping) into an EdgeConfig; raises ConfigError."""
    root = f.root(source)
    f.only_keys(root, "", {"auth", "listeners", "tunnel", "trustedProxies", "limits", "heartbeat", "http",
                           "logging", "drainSeconds", "id", "replicas", "peers"})
    if "auth" not in root:
        raise ConfigError("auth", "is required (auth.secretFile holds the shared token secret)")
    auth = f.mapping(root["auth"], "auth")
    f.only_keys(auth, "auth", {"secretFile"})
    listeners = _listeners(root)
    tunnel = _tunnel(root)
    http = read_http(root)
    peers = _peers(root)
    _no_port_clash(listeners, tunnel, http, peers)
    return EdgeConfig(
        secret_file=f.string(auth, "secretFile", "auth"),
        listeners=listeners,
        tunnel=tunnel,
        trusted_proxies=_trusted(root),
        limits=_limits(root),
        heartbeat=_heartbeat(root),
        http=http,
        logging=read_logging(root),
        drain_seconds=f.number(root, "drainSeconds", "", 20.0, 0, 3600),
        id=_edge_id(root),
        replicas=f.integer(root, "replicas", "", 1, 1, 1000),
        peers=peers,
    )


def _peers(root: Mapping[str, Any]) -> PeersConfig | None:
    if root.get("peers") is None:
        return None
    obj = f.mapping(root["peers"], "peers")
    f.only_keys(obj, "peers", {"listen", "hostname", "addresses", "port", "nameservers", "secretFile",
                               "refreshSeconds", "resolveSeconds", "expireSeconds", "connectTimeoutSeconds",
                               "maxForwards", "clockSkewSeconds"})
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
    refresh = f.number(obj, "refreshSeconds", "peers", 1.0, 0.05, 300)
    expire = f.number(obj, "expireSeconds", "peers", max(5.0, 3 * refresh), 0.1, 3600)
    if expire <= refresh:
        raise ConfigError("peers.expireSeconds", f"must be greater than refreshSeconds ({expire:g} <= "
                          f"{refresh:g}), or every peer would expire between two polls")
    return PeersConfig(
        listen=f.listen(obj, "listen", "peers"),
        hostname=hostname,
        addresses=tuple(addresses),
        port=port,
        nameservers=tuple(nameservers),
        secret_file=f.opt_string(obj, "secretFile", "peers"),
        refresh_seconds=refresh,
        resolve_seconds=f.number(obj, "resolveSeconds", "peers", 10.0, 0.1, 3600),
        expire_seconds=expire,
        connect_timeout_seconds=f.number(obj, "connectTimeoutSeconds", "peers", 2.0, 0.01, 60),
        max_forwards=f.integer(obj, "maxForwards", "peers", 1000, 1, 1_000_000),
        clock_skew_seconds=f.number(obj, "clockSkewSeconds", "peers", 10.0, 0.1, 300),
    )


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
        f.only_keys(obj, path, {"kind", "listen", "publicPort", "proxyProtocol", *UDP_KEYS})
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
        udp = _udp_options(obj, path) if kind == "udp" else None
        stray = sorted(UDP_KEYS & set(obj)) if kind != "udp" else []
        if stray:
            raise ConfigError(f"{path}.{stray[0]}", "applies to kind: udp listeners only")
        out.append(ListenerConfig(kind, listen, public_port, proxy_protocol, udp))
    for kind in ("tcp", "udp"):
        ports = [item.public_port or item.host_port[1] for item in out if item.kind == kind]
        for port in ports:
            if ports.count(port) > 1:
                raise ConfigError("listeners", f"two {kind} listeners claim public port {port}; tokens "
                                  "could not tell them apart")
    return tuple(out)


def _udp_options(obj: Mapping[str, Any], path: str) -> UdpOptions:
    return UdpOptions(
        idle_timeout_seconds=f.number(obj, "idleTimeoutSeconds", path, 30.0, 0.01, 86400),
        max_datagram_bytes=f.integer(obj, "maxDatagramBytes", path, MAX_UDP_PAYLOAD, 1, MAX_UDP_PAYLOAD),
        max_clients=f.integer(obj, "maxClients", path, 10000, 1, 1_000_000),
        datagram_rate=f.number(obj, "datagramRate", path, 1000.0, 0.01, 10_000_000),
        datagram_burst=f.integer(obj, "datagramBurst", path, 2000, 1, 10_000_000),
        tunnel_datagram_rate=f.number(obj, "tunnelDatagramRate", path, 100000.0, 0.01, 100_000_000),
    )


def _tunnel(root: Mapping[str, Any]) -> TunnelEndpoint:
    obj = f.mapping(root.get("tunnel"), "tunnel")
    f.only_keys(obj, "tunnel", {"listen", "path", "tls"})
    listen = f.listen(obj, "listen", "tunnel", "0.0.0.0:8443")
    path = f.string(obj, "path", "tunnel", "/")
    if not path.startswith("/"):
        raise ConfigError("tunnel.path", f"must start with / (got {path!r})")
    cert = key = None
    if obj.get("tls") is not None:
        tls = f.mapping(obj["tls"], "tunnel.tls")
        f.only_keys(tls, "tunnel.tls", {"certFile", "keyFile"})
        cert = f.string(tls, "certFile", "tunnel.tls")
        key = f.string(tls, "keyFile", "tunnel.tls")
    return TunnelEndpoint(listen, path, cert, key)


def _trusted(root: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for i, cidr in enumerate(f.seq(root, "trustedProxies", "")):
        try:
            out.append(str(ipaddress.ip_network(str(cidr), strict=False)))
        except ValueError:
            raise ConfigError(f"trustedProxies[{i}]",
                              f"must be an address or CIDR such as 10.0.0.0/8 (got {cidr!r})") from None
    return tuple(out)


def _limits(root: Mapping[str, Any]) -> EdgeLimits:
    obj = f.mapping(root.get("limits"), "limits")
    f.only_keys(obj, "limits", {"maxTunnels", "streamsPerTunnel", "connectionsPerClient", "connectionRate",
                                "connectionBurst", "sniffTimeoutSeconds", "idleTimeoutSeconds",
                                "streamBufferBytes", "maxFrameBytes", "preRoutingConnections",
                                "listenBacklog", *BUFFER_KEYS})
    return EdgeLimits(
        **read_buffer_limits(obj),
        pre_routing_connections=f.integer(obj, "preRoutingConnections", "limits", 2000, 1, 1_000_000),
        listen_backlog=f.integer(obj, "listenBacklog", "limits", 4096, 1, 65535),
        streams_per_tunnel=f.integer(obj, "streamsPerTunnel", "limits", 1000, 1, 1_000_000),
        connections_per_client=f.integer(obj, "connectionsPerClient", "limits", 100, 1, 1_000_000),
        connection_rate=f.number(obj, "connectionRate", "limits", 50.0, 0.01, 1_000_000),
        connection_burst=f.integer(obj, "connectionBurst", "limits", 100, 1, 1_000_000),
        sniff_timeout_seconds=f.number(obj, "sniffTimeoutSeconds", "limits", 10.0, 0.01, 600),
        idle_timeout_seconds=f.number(obj, "idleTimeoutSeconds", "limits", 900.0, 0.01, 86400 * 7),
        stream_buffer_bytes=f.integer(obj, "streamBufferBytes", "limits", 1048576, 1024, 64 * 1024 * 1024),
        max_frame_bytes=f.integer(obj, "maxFrameBytes", "limits", 1048576, 1024, 100 * 1024 * 1024),
        max_tunnels=f.integer(obj, "maxTunnels", "limits", 10000, 1, 1_000_000),
    )


def _heartbeat(root: Mapping[str, Any]) -> EdgeHeartbeat:
    obj = f.mapping(root.get("heartbeat"), "heartbeat")
    f.only_keys(obj, "heartbeat", {"intervalSeconds", "timeoutSeconds", "authTimeoutSeconds"})
    interval, timeout = f.heartbeat(obj, "heartbeat", 15.0, 45.0)
    auth = f.number(obj, "authTimeoutSeconds", "heartbeat", 10.0, 0.01, 600)
    return EdgeHeartbeat(interval, timeout, auth)


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
