"""The sidecar config schema: the operator's contract. Valid files load; bad ones name the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mproxy.config.errors import ConfigError
from mproxy.config.loader import ConfigWatcher, load_file
from mproxy.config.sidecar import SidecarConfig, load_sidecar_config

FULL = """
edge:
  urls: ["wss://edge.example.com/mproxy", "ws://127.0.0.1:8080/"]
  connectionsPerUrl: 2
  tokenFile: /var/run/mproxy/token/token
  caFile: /var/run/mproxy/ca/ca.crt
  tokenIn: query
routes:
  - name: web
    match:
      services: [https, tls]
      ports: [443]
      hostnames: ["example.com", "*.Example.com"]
    backend:
      host: web.default.svc.cluster.local
      port: 8443
      connectTimeoutSeconds: 2.5
      proxyProtocol: v2
  - name: ssh
    match: {services: [ssh]}
    backend: {host: ssh.default.svc, port: 22}
defaultRoute: ssh
limits: {maxStreamsPerTunnel: 10, maxStreamsPerClient: 5, idleTimeoutSeconds: 60, maxFrameBytes: 65536}
heartbeat: {intervalSeconds: 1, timeoutSeconds: 3}
reconnect: {initialSeconds: 0.05, maxSeconds: 5, fastWindowSeconds: 2}
metrics: {labels: route, maxClients: 10}
http: {listen: "[::1]:9091"}
logging: {format: text, level: debug}
drainSeconds: 3
"""


def test_full_config_loads_and_round_trips() -> None:
    cfg = load_sidecar_config(FULL)
    assert cfg.edge.urls == ("wss://edge.example.com/mproxy", "ws://127.0.0.1:8080/")
    assert cfg.edge.connections_per_url == 2
    assert cfg.edge.token_in == "query"
    web, ssh = cfg.routes[0], cfg.routes[1]
    assert web.match.hostnames == ("example.com", "*.example.com")  # lowercased
    assert web.backend is not None and ssh.backend is not None
    assert web.backend.proxy_protocol == "v2"
    assert web.backend.connect_timeout_seconds == 2.5
    assert ssh.backend.connect_timeout_seconds == 5.0
    assert cfg.default_route == "ssh"
    assert cfg.limits.max_frame_bytes == 65536
    assert cfg.http.host_port == ("::1", 9091)
    assert cfg.metrics.labels == "route"
    assert cfg.reconnect.fast_window_seconds == 2.0
    # to_dict is the operator's renderer: it must load back to the same value, from a mapping and YAML.
    assert load_sidecar_config(cfg.to_dict()) == cfg
    assert load_sidecar_config(cfg.to_yaml()) == cfg


def test_minimal_config_gets_defaults() -> None:
    cfg = load_sidecar_config({"edge": {"urls": ["ws://127.0.0.1:1/"]}})
    assert isinstance(cfg, SidecarConfig)
    assert cfg.routes == ()
    assert cfg.default_route is None
    assert cfg.limits.max_streams_per_tunnel == 1000
    assert cfg.heartbeat.timeout_seconds == 30.0
    assert cfg.reconnect.fast_window_seconds == 5.0
    assert cfg.metrics.labels == "client"
    assert cfg.logging.format == "json"


def test_tunnel_send_buffer_modes() -> None:
    assert load_sidecar_config(BASE).limits.tunnel_send_buffer_bytes is None  # auto
    assert load_sidecar_config(BASE).to_dict()["limits"]["tunnelSendBufferBytes"] == "auto"
    kernel = load_sidecar_config(BASE + "limits: {tunnelSendBufferBytes: 0}")
    assert kernel.limits.tunnel_send_buffer_bytes == 0
    fixed = load_sidecar_config(BASE + "limits: {tunnelSendBufferBytes: 65536}")
    assert fixed.limits.tunnel_send_buffer_bytes == 65536
    assert load_sidecar_config(fixed.to_dict()) == fixed


def test_buffer_limits_have_the_edges_names_and_reach_the_backend_rule() -> None:
    from mproxy.config.edge import EdgeLimits
    from mproxy.sidecar.app import backend_options
    from mproxy.sidecar.tunnel_client import mux_limits

    defaults = load_sidecar_config(BASE).limits
    edge = EdgeLimits()
    assert (defaults.buffer_soft_bytes, defaults.buffer_hard_bytes, defaults.buffer_grace_seconds,
            defaults.tunnel_buffer_bytes, defaults.ipv6_prefix_length) == (
        edge.buffer_soft_bytes, edge.buffer_hard_bytes, edge.buffer_grace_seconds, edge.tunnel_buffer_bytes,
        edge.ipv6_prefix_length)
    cfg = load_sidecar_config(BASE + "limits: {bufferSoftBytes: 4194304, bufferHardBytes: 16777216, "
                              "bufferGraceSeconds: 0.5, tunnelBufferBytes: 33554432, ipv6PrefixLength: 56}")
    assert load_sidecar_config(cfg.to_dict()) == cfg
    assert {k: v for k, v in cfg.to_dict()["limits"].items() if "uffer" in k and "stream" not in k
            and "Send" not in k} == {"bufferSoftBytes": 4194304, "bufferHardBytes": 16777216,
                                     "bufferGraceSeconds": 0.5, "tunnelBufferBytes": 33554432}
    rule = backend_options(cfg).rule
    assert (rule.soft, rule.hard, rule.grace, rule.tunnel) == (4194304, 16777216, 0.5, 33554432)
    assert mux_limits(cfg).ipv6_prefix == 56


def test_yaml_off_means_off() -> None:
    cfg = load_sidecar_config("edge: {urls: ['ws://h/']}\nmetrics: {labels: off}\n")
    assert cfg.metrics.labels == "off"


BASE = "edge: {urls: ['ws://h/']}\n"


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("routes: []", "edge", "required"),
        ("edge: {urls: []}", "edge.urls", "at least one"),
        ("edge: {urls: ['http://x/']}", "edge.urls[0]", "ws://"),
        ("edge: {urls: ['ws://x/'], tokenIn: cookie}", "edge.tokenIn", "header"),
        ("edge: {urls: ['ws://x/'], connectionsPerUrl: 0}", "edge.connectionsPerUrl", "1-64"),
        (BASE + "routes: [{name: a, backend: {host: h, port: 0}}]", "routes[0].backend.port", "1-65535"),
        (BASE + "routes: [{name: a, backend: {host: h, port: 1}}, {name: b, backend: {host: h}}]",
         "routes[1].backend.port", "required"),
        (BASE + "routes: [{name: a}]", "routes[0].backend", "required"),
        (BASE + "routes: [{name: a, backend: {host: h, port: 1}}, {name: a, backend: {host: h, port: 2}}]",
         "routes[1].name", "duplicate"),
        (BASE + "routes: [{name: a, match: {hostnames: ['a..b']}, backend: {host: h, port: 1}}]",
         "routes[0].match.hostnames[0]", "host name"),
        (BASE + "routes: [{name: a, match: {ports: [70000]}, backend: {host: h, port: 1}}]",
         "routes[0].match.ports[0]", "1-65535"),
        (BASE + "routes: [{name: a, backend: {host: h, port: 1, proxyProtocol: v3}}]",
         "routes[0].backend.proxyProtocol", "v1"),
        (BASE + "routes: [{name: a, backend: {host: h, port: 1, conectTimeout: 3}}]",
         "routes[0].backend.conectTimeout", "unknown field"),
        (BASE + "defaultRoute: nope", "defaultRoute", "names no route"),
        (BASE + "heartbeat: {intervalSeconds: 5, timeoutSeconds: 5}", "heartbeat.timeoutSeconds", "greater"),
        (BASE + "reconnect: {initialSeconds: 5, maxSeconds: 1}", "reconnect.maxSeconds", ">="),
        (BASE + "reconnect: {fastWindowSeconds: 600}", "reconnect.fastWindowSeconds", "0-60"),
        (BASE + "reconnect: {fastWindowSeconds: soon}", "reconnect.fastWindowSeconds", "number"),
        (BASE + "limits: {maxStreamsPerTunnel: many}", "limits.maxStreamsPerTunnel", "integer"),
        (BASE + "http: {listen: nowhere}", "http.listen", "HOST:PORT"),
        (BASE + "metrics: {labels: everything}", "metrics.labels", "off"),
        (BASE + "bogus: 1", "bogus", "unknown field"),
        (BASE + "limits: {tunnelSendBufferBytes: 100}", "limits.tunnelSendBufferBytes", "auto"),
        (BASE + "limits: {tunnelSendBufferBytes: big}", "limits.tunnelSendBufferBytes", "auto"),
        (BASE + "limits: {bufferSoftBytes: 1000}", "limits.bufferSoftBytes", "65536"),
        (BASE + "limits: {bufferSoftBytes: 4194304, bufferHardBytes: 2097152}", "limits.bufferHardBytes",
         "at least bufferSoftBytes"),
        (BASE + "limits: {tunnelBufferBytes: 65536}", "limits.tunnelBufferBytes", "at least bufferSoftBytes"),
        (BASE + "limits: {bufferGraceSeconds: 0}", "limits.bufferGraceSeconds", "0.01"),
        (BASE + "limits: {ipv6PrefixLength: 129}", "limits.ipv6PrefixLength", "128"),
    ],
)
def test_errors_name_the_field(text: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_sidecar_config(text)
    assert info.value.path == path
    assert str(info.value).startswith(path + ": ")
    assert words in str(info.value)


def test_not_yaml_is_a_config_error_with_a_line() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        load_sidecar_config("edge:\n  urls: [unclosed\n  x: {")


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_sidecar_config("- a\n- b\n")


def test_load_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_file(tmp_path / "missing.yaml", load_sidecar_config)
    bad = tmp_path / "bad.yaml"
    bad.write_text("edge: {urls: []}\n")
    with pytest.raises(ConfigError, match=r"edge\.urls: .*bad\.yaml"):
        load_file(bad, load_sidecar_config)


def _configmap_swap(root: Path, text: str, gen: int) -> None:
    """What the kubelet does: write a new timestamped dir, then atomically repoint ..data."""
    d = root / f"..{gen}"
    d.mkdir()
    (d / "config.yaml").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(d.name)
    os.replace(tmp, root / "..data")


def test_watcher_follows_a_configmap_symlink_swap(tmp_path: Path) -> None:
    _configmap_swap(tmp_path, BASE + "drainSeconds: 1\n", 1)
    (tmp_path / "config.yaml").symlink_to("..data/config.yaml")
    seen: list[SidecarConfig] = []
    watcher = ConfigWatcher(tmp_path / "config.yaml", load_sidecar_config, seen.append, interval=0.01)
    assert not watcher.check()  # unchanged
    _configmap_swap(tmp_path, BASE + "drainSeconds: 2\n", 2)
    assert watcher.check()
    assert seen[-1].drain_seconds == 2
    # A bad new config is refused and the old one is kept (no callback).
    _configmap_swap(tmp_path, "edge: {urls: []}\n", 3)
    assert not watcher.check()
    assert watcher.rejected == 1 and watcher.last_error and "edge.urls" in watcher.last_error
    assert len(seen) == 1
    # Same content under a new name: no reload.
    _configmap_swap(tmp_path, BASE + "drainSeconds: 2\n", 4)
    assert watcher.check() is False
    assert len(seen) == 1
    _configmap_swap(tmp_path, BASE + "drainSeconds: 4\n", 5)
    assert watcher.check()
    assert seen[-1].drain_seconds == 4
