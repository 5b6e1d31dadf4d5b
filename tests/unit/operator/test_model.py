"""parse_spec: defaults applied, and every bad field named in the error."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.operator.fixtures import tunnel

from mproxy_operator.model import SpecError, parse_spec


def test_defaults_are_those_of_the_crd() -> None:
    spec = parse_spec(tunnel()["spec"])
    assert spec.mode == "Sidecar"
    assert spec.edge.connections_per_url == 1
    assert spec.edge.token_in == "header"
    assert (spec.edge.token.name, spec.edge.token.key) == ("edge-token", "token")
    assert spec.edge.ca is None
    assert spec.metrics_port == 9090 and spec.metrics.labels == "client" and spec.metrics.max_clients == 200
    assert spec.connector_replicas == 2
    web, ssh = spec.routes
    assert (web.service, web.port, web.proxy_protocol, web.connect_timeout_seconds) == (
        "web",
        "https",
        "none",
        5.0,
    )
    assert (ssh.port, ssh.proxy_protocol, ssh.connect_timeout_seconds, ssh.ports) == (22, "v2", 2.0, (22,))
    assert spec.referenced_services() == {"web", "bastion"}


def test_ca_ref_defaults_to_a_config_map_key_ca_crt() -> None:
    body = tunnel()
    body["spec"]["edge"]["caRef"] = {"name": "edge-ca"}
    ca = parse_spec(body["spec"]).edge.ca
    assert ca is not None and (ca.kind, ca.name, ca.key) == ("ConfigMap", "edge-ca", "ca.crt")


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    body = tunnel()
    node: Any = body["spec"]
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    spec: dict[str, Any] = body["spec"]
    return spec


BAD = [
    (["mode"], "Bridge", "spec.mode"),
    (["selector"], KeyError, "spec.selector"),
    (["edge", "urls"], [], "spec.edge.urls"),
    (["edge", "urls"], ["https://edge.example.com"], "spec.edge.urls[0]"),
    (["edge", "tokenSecretRef"], KeyError, "spec.edge.tokenSecretRef"),
    (["edge", "tokenSecretRef"], {"key": "t"}, "spec.edge.tokenSecretRef.name"),
    (["edge", "connectionsPerUrl"], 0, "spec.edge.connectionsPerUrl"),
    (["edge", "tokenIn"], "cookie", "spec.edge.tokenIn"),
    (["routes", 0, "backend", "port"], 0, "spec.routes[0].backend.port"),
    (["routes", 0, "backend", "port"], True, "spec.routes[0].backend.port"),
    (["routes", 0, "backend", "service"], "", "spec.routes[0].backend.service"),
    (["routes", 1, "match", "ports"], [70000], "spec.routes[1].match.ports[0]"),
    (["routes", 1, "proxyProtocol"], "v3", "spec.routes[1].proxyProtocol"),
    (["routes", 1, "name"], "web", "spec.routes[1].name"),
    (["routes"], "web", "spec.routes"),
    (["defaultRoute"], "nope", "spec.defaultRoute"),
    (["metrics"], {"labels": "pod"}, "spec.metrics.labels"),
    (["connector"], {"replicas": -1}, "spec.connector.replicas"),
    (["gateway"], {"replicas": -1}, "spec.gateway.replicas"),
    (
        ["selector"],
        {"matchExpressions": [{"key": "a", "operator": "Near"}]},
        "spec.selector.matchExpressions[0]",
    ),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD, ids=[b[2] + "=" + repr(b[1]) for b in BAD])
def test_bad_fields_are_named(path: list[Any], value: Any, field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_with(path, value))
    assert str(err.value).startswith(field + ".") or str(err.value).startswith(field + ":"), str(err.value)


def test_connector_mode_needs_no_selector() -> None:
    spec = parse_spec(tunnel(mode="Connector", selector=None, connector={"replicas": 3})["spec"])
    assert spec.mode == "Connector" and spec.selector is None and spec.connector_replicas == 3


def test_gateway_mode_is_read_as_connector_mode() -> None:
    """Connector mode's former name and field keep working for Tunnels written before the rename."""
    spec = parse_spec(tunnel(mode="Gateway", selector=None, gateway={"replicas": 3})["spec"])
    assert spec.mode == "Connector" and spec.connector_replicas == 3
    both = parse_spec(tunnel(mode="Gateway", selector=None, gateway={"replicas": 3},
                             connector={"replicas": 5})["spec"])
    assert both.connector_replicas == 5  # the new field wins


def test_not_a_mapping() -> None:
    with pytest.raises(SpecError, match="spec: must be a mapping"):
        parse_spec(["x"])  # type: ignore[arg-type]


def test_udp_routes_take_no_proxy_header_and_no_hostnames() -> None:
    def udp_route(**extra: Any) -> dict[str, Any]:
        body = tunnel()
        body["spec"]["routes"] = [{"name": "dns", "match": {"services": ["udp"], "ports": [53]},
                                   "backend": {"service": "kube-dns", "port": 53}, **extra}]
        spec: dict[str, Any] = body["spec"]
        return spec

    spec = parse_spec(udp_route())
    assert spec.routes[0].services == ("udp",)
    with pytest.raises(SpecError, match=r"^spec.routes\[0\].proxyProtocol"):
        parse_spec(udp_route(proxyProtocol="v2"))
    bad = udp_route()
    bad["routes"][0]["match"]["hostnames"] = ["dns.example.com"]
    with pytest.raises(SpecError, match=r"^spec.routes\[0\].match.hostnames"):
        parse_spec(bad)
