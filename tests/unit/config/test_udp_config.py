"""UDP in both configs: edge `kind: udp` listeners and sidecar `udp` routes; bad input names its field."""

from __future__ import annotations

import pytest

from mproxy.config.edge import MAX_UDP_PAYLOAD, UdpOptions, load_edge_config
from mproxy.config.errors import ConfigError
from mproxy.config.sidecar import load_sidecar_config

EDGE = "auth: {secretFile: s}\n"
SIDECAR = "edge: {urls: ['ws://h/']}\n"


def test_a_udp_listener_gets_its_defaults_and_may_share_a_tcp_port_number() -> None:
    cfg = load_edge_config(EDGE + "listeners: [{kind: udp, listen: '0.0.0.0:53'}, "
                           "{kind: tcp, listen: '0.0.0.0:53'}]")
    udp, tcp = cfg.listeners
    assert udp.service == "udp" and udp.udp == UdpOptions() and tcp.udp is None
    assert udp.udp.idle_timeout_seconds == 30 and udp.udp.max_datagram_bytes == MAX_UDP_PAYLOAD
    assert load_edge_config(cfg.to_dict()) == cfg  # round trip


@pytest.mark.parametrize(("text", "path", "words"), [
    ("listeners: [{kind: udp, listen: '0.0.0.0:0'}]", "listeners[0].publicPort", "udp listener on port 0"),
    ("listeners: [{kind: udp, listen: ':53', maxDatagramBytes: 70000}]", "listeners[0].maxDatagramBytes",
     "65507"),
    ("listeners: [{kind: udp, listen: ':53', proxyProtocol: true}]", "listeners[0].proxyProtocol", "udp"),
    ("listeners: [{kind: tcp, listen: ':53', idleTimeoutSeconds: 5}]", "listeners[0].idleTimeoutSeconds",
     "kind: udp"),
    ("listeners: [{kind: udp, listen: ':53'}, {kind: udp, listen: ':54', publicPort: 53}]", "listeners",
     "two udp listeners claim public port 53"),
    ("listeners: [{kind: udp, listen: ':53'}, {kind: udp, listen: ':53', publicPort: 54}]",
     "listeners[1].listen", "already used"),
])
def test_bad_udp_listeners_name_the_field(text: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_edge_config(EDGE + text)
    assert info.value.path == path and words in str(info.value), str(info.value)


@pytest.mark.parametrize(("route", "path"), [
    ("{name: dns, match: {services: [udp]}, backend: {host: h, port: 53, proxyProtocol: v2}}",
     "routes[0].backend.proxyProtocol"),
    ("{name: dns, match: {services: [udp], hostnames: [a.example]}, backend: {host: h, port: 53}}",
     "routes[0].match.hostnames"),
])
def test_a_udp_route_cannot_have_what_udp_cannot_use(route: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_sidecar_config(SIDECAR + f"routes: [{route}]")
    assert info.value.path == path and "udp route" in str(info.value)


def test_a_udp_route_and_its_idle_timeout() -> None:
    cfg = load_sidecar_config(SIDECAR + "routes: [{name: dns, match: {services: [udp], ports: [53]}, "
                              "backend: {host: h, port: 53}}]\nlimits: {udpIdleTimeoutSeconds: 5}")
    assert cfg.routes[0].match.services == ("udp",) and cfg.limits.udp_idle_timeout_seconds == 5
    assert load_sidecar_config(SIDECAR + "routes: []").limits.udp_idle_timeout_seconds == 30
