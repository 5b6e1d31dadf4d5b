"""The edge config schema: a full example loads; each mistake is named by its field path."""

from __future__ import annotations

import pytest

from mproxy.config.edge import load_edge_config
from mproxy.config.errors import ConfigError

FULL = """
auth: {secretFile: /etc/mproxy/secret}
listeners:
  - {kind: tls, listen: "0.0.0.0:443"}
  - {kind: tls, listen: "0.0.0.0:4443", tlsRefusal: close}
  - {kind: http, listen: "0.0.0.0:80", proxyProtocol: true}
  - {kind: tcp, listen: "0.0.0.0:5050", publicPort: 6060}
tunnel:
  listen: "0.0.0.0:8443"
  path: /tunnel
  tls: {certFile: /tls/tls.crt, keyFile: /tls/tls.key}
trustedProxies: [10.0.0.0/8, "::1"]
limits: {maxStreamsPerTunnel: 50, maxStreamsPerClient: 10, connectionRate: 5, connectionBurst: 10}
heartbeat: {intervalSeconds: 5, timeoutSeconds: 15}
http: {listen: "127.0.0.1:9090"}
logging: {format: text, level: debug}
drainSeconds: 3
"""


def test_full_example_round_trips() -> None:
    cfg = load_edge_config(FULL)
    assert [item.kind for item in cfg.listeners] == ["tls", "tls", "http", "tcp"]
    assert cfg.listeners[3].public_port == 6060 and cfg.listeners[2].proxy_protocol
    assert cfg.listeners[0].service == "https"
    assert [item.tls_refusal for item in cfg.listeners] == ["alert", "close", "alert", "alert"]
    assert "tlsRefusal" not in cfg.listeners[0].to_dict()  # the default is left out
    assert cfg.tunnel.tls and cfg.tunnel.path == "/tunnel"
    assert cfg.trusted_proxies == ("10.0.0.0/8", "::1/128")
    assert cfg.limits.streams_per_tunnel == 50 and cfg.limits.connection_rate == 5.0
    assert cfg.heartbeat.timeout_seconds == 15
    assert load_edge_config(cfg.to_yaml()) == cfg


def test_minimal_config_has_defaults() -> None:
    cfg = load_edge_config("auth: {secretFile: s}")
    assert cfg.listeners == () and cfg.tunnel.path == "/" and not cfg.tunnel.tls


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("listeners: []", "auth"),
        ("auth: {secretFile: ''}", "auth.secretFile"),
        ("auth: {secretFile: s}\nlisteners: [{kind: quic, listen: ':1'}]", "listeners[0].kind"),
        ("auth: {secretFile: s}\nlisteners: [{listen: ':1'}]", "listeners[0].kind"),
        ("auth: {secretFile: s}\nlisteners: [{kind: tls, listen: 'nope'}]", "listeners[0].listen"),
        ("auth: {secretFile: s}\nlisteners: [{kind: tcp, listen: ':0'}]", "listeners[0].publicPort"),
        ("auth: {secretFile: s}\nlisteners: [{kind: tls, listen: ':1', prot: 1}]", "listeners[0].prot"),
        ("auth: {secretFile: s}\nlisteners: [{kind: tls, listen: ':1', tlsRefusal: reset}]",
         "listeners[0].tlsRefusal"),
        ("auth: {secretFile: s}\nlisteners: [{kind: http, listen: ':1', tlsRefusal: close}]",
         "listeners[0].tlsRefusal"),
        ("auth: {secretFile: s}\nlisteners: [{kind: tcp, listen: ':1'}, {kind: tcp, listen: ':2', "
         "publicPort: 1}]", "listeners"),
        ("auth: {secretFile: s}\nlisteners: [{kind: tls, listen: ':9'}]\nhttp: {listen: ':9'}",
         "http.listen"),
        ("auth: {secretFile: s}\ntunnel: {path: tunnel}", "tunnel.path"),
        ("auth: {secretFile: s}\ntunnel: {listen: nope}", "tunnel.listen"),
        ("auth: {secretFile: s}\nhttp: {listen: 'host:port'}", "http.listen"),
        ("auth: {secretFile: s}\ntunnel: {tls: {certFile: a}}", "tunnel.tls.keyFile"),
        ("auth: {secretFile: s}\ntrustedProxies: [10.0.0.0/33]", "trustedProxies[0]"),
        ("auth: {secretFile: s}\nlimits: {maxStreamsPerTunnel: 0}", "limits.maxStreamsPerTunnel"),
        ("auth: {secretFile: s}\nlimits: {bufferSoftBytes: 9000000, bufferHardBytes: 8000000}",
         "limits.bufferHardBytes"),
        ("auth: {secretFile: s}\nlimits: {tunnelBufferBytes: 1000000}", "limits.tunnelBufferBytes"),
        ("auth: {secretFile: s}\nlimits: {bufferGraceSeconds: 0}", "limits.bufferGraceSeconds"),
        ("auth: {secretFile: s}\nlimits: {preRoutingConnections: 0}", "limits.preRoutingConnections"),
        ("auth: {secretFile: s}\nlimits: {ipv6PrefixLength: 129}", "limits.ipv6PrefixLength"),
        ("auth: {secretFile: s}\nheartbeat: {intervalSeconds: 5, timeoutSeconds: 5}",
         "heartbeat.timeoutSeconds"),
        ("auth: {secretFile: s}\nlogging: {level: loud}", "logging.level"),
        ("auth: [", ""),
    ],
)
def test_errors_name_the_field(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_edge_config(text)
    assert err.value.path == path, str(err.value)


def test_buffer_and_admission_limits() -> None:
    cfg = load_edge_config("auth: {secretFile: s}\nlimits: {bufferSoftBytes: 1048576, bufferHardBytes: "
                           "2097152, bufferGraceSeconds: 0.5, tunnelBufferBytes: 4194304, "
                           "preRoutingConnections: 300, ipv6PrefixLength: 56}")
    lim = cfg.limits
    assert (lim.buffer_soft_bytes, lim.buffer_hard_bytes, lim.buffer_grace_seconds) == (1 << 20, 2 << 20, 0.5)
    assert (lim.tunnel_buffer_bytes, lim.pre_routing_connections) == (4 << 20, 300)
    assert lim.ipv6_prefix_length == 56
    assert load_edge_config(cfg.to_yaml()) == cfg
    default = load_edge_config("auth: {secretFile: s}").limits
    assert (default.buffer_soft_bytes, default.buffer_hard_bytes, default.tunnel_buffer_bytes) == (
        8 << 20, 64 << 20, 256 << 20)
    assert (default.pre_routing_connections, default.ipv6_prefix_length) == (2000, 64)


PEERS = {"auth": {"secretFile": "/s"}}


def test_peers_section_round_trips_with_its_defaults() -> None:
    cfg = load_edge_config(PEERS | {"peers": {"listen": "0.0.0.0:8444", "hostname": "edge-tunnel.ns.svc",
                                              "nameservers": ["10.96.0.10"]}})
    assert cfg.peers is not None
    assert cfg.peers.nameservers == ("10.96.0.10:53",) and cfg.peers.port is None
    assert cfg.peers.refresh_seconds == 1.0 and cfg.peers.expire_seconds == 5.0
    assert load_edge_config(cfg.to_yaml()) == cfg
    assert load_edge_config(PEERS).peers is None


@pytest.mark.parametrize(("peers", "path"), [
    ({"hostname": "x"}, "peers.listen"),
    ({"listen": "0.0.0.0:8444"}, "peers"),
    ({"listen": "nope", "hostname": "x"}, "peers.listen"),
    ({"listen": "0.0.0.0:8444", "addresses": [""]}, "peers.addresses[0]"),
    ({"listen": "0.0.0.0:8444", "hostname": "x", "refreshSeconds": 2, "expireSeconds": 1},
     "peers.expireSeconds"),
    ({"listen": "0.0.0.0:8444", "hostname": "x", "maxForwards": 0}, "peers.maxForwards"),
    ({"listen": "0.0.0.0:8444", "hostname": "x", "secret": "inline"}, "peers.secret"),
    ({"listen": "0.0.0.0:8443", "hostname": "x"}, "peers.listen"),  # the tunnel port's
])
def test_peers_mistakes_name_their_field(peers: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_edge_config(PEERS | {"peers": peers})
    assert info.value.path == path, info.value
