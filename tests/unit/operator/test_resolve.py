"""Routes against Services: by port name or number, headless, ExternalName, and what is reported."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.operator.fixtures import SERVICES

from mproxy_operator.model import Route
from mproxy_operator.resolve import Resolved, Unresolved, resolve_route, resolve_routes

HEADLESS = {
    "spec": {
        "clusterIP": "None",
        "ports": [
            {"name": "db", "port": 5432, "targetPort": 15432},
            {"name": "named", "port": 80, "targetPort": "http"},
        ],
    }
}
EXTERNAL = {"spec": {"type": "ExternalName", "externalName": "db.example.net"}}

CASES: list[tuple[str, Route, dict[str, Any] | None, Any]] = [
    ("by name", Route("r", "web", "https"), SERVICES["web"], ("web.prod.svc.cluster.local", 443)),
    ("by number", Route("r", "web", 80), SERVICES["web"], ("web.prod.svc.cluster.local", 80)),
    ("unnamed port", Route("r", "bastion", 22), SERVICES["bastion"], ("bastion.prod.svc.cluster.local", 22)),
    ("target port is not a service port", Route("r", "web", 8443), SERVICES["web"], "PortNotFound"),
    ("unknown name", Route("r", "web", "grpc"), SERVICES["web"], "PortNotFound"),
    ("no service", Route("r", "gone", 80), None, "ServiceNotFound"),
    ("headless uses the target port", Route("r", "db", "db"), HEADLESS, ("db.prod.svc.cluster.local", 15432)),
    ("headless with a named target", Route("r", "db", "named"), HEADLESS, "UnsupportedService"),
    ("external name, number", Route("r", "ext", 5432), EXTERNAL, ("ext.prod.svc.cluster.local", 5432)),
    ("external name, port name", Route("r", "ext", "pg"), EXTERNAL, "PortNotFound"),
]


@pytest.mark.parametrize(("route", "service", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_resolve_route(route: Route, service: dict[str, Any] | None, want: Any) -> None:
    got = resolve_route(route, service, "prod", "cluster.local")
    if isinstance(want, tuple):
        assert isinstance(got, Resolved) and (got.host, got.port) == want
    else:
        assert isinstance(got, Unresolved) and got.reason == want
        assert f"route {route.name}" in got.message and route.service in got.message


def test_missing_port_message_lists_the_ports() -> None:
    got = resolve_route(Route("r", "web", "grpc"), SERVICES["web"], "prod", "cluster.local")
    assert isinstance(got, Unresolved)
    assert "http/80, https/443" in got.message and "spec.routes[].backend.port" in got.message


def test_one_bad_route_leaves_the_others() -> None:
    routes = (Route("a", "web", "https"), Route("b", "gone", 1), Route("c", "bastion", 22))
    resolved, unresolved = resolve_routes(routes, SERVICES, "prod", "example.internal")
    assert [r.route.name for r in resolved] == ["a", "c"]
    assert resolved[0].host == "web.prod.svc.example.internal"
    assert [(u.route.name, u.reason) for u in unresolved] == [("b", "ServiceNotFound")]


KUBE_DNS = {"spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                               {"name": "metrics", "port": 9153, "protocol": "TCP"},
                               {"name": "syslog", "port": 514, "protocol": "UDP"},
                               {"name": "sig", "port": 2905, "protocol": "SCTP"}]}}


@pytest.mark.parametrize(("services", "port", "want"), [
    (("udp",), 53, 53),  # the UDP port of a number both protocols use
    (("udp",), "dns", 53),
    (("tcp",), 53, 53),
    ((), "dns-tcp", 53),
    (("udp",), "dns-tcp", "PortNotFound"),  # named TCP port for a udp route
    (("tcp",), "dns", "PortNotFound"),  # named UDP port for a tcp route
    ((), 514, "PortNotFound"),  # UDP only: a byte-stream route cannot use it
    (("udp",), 514, 514),
    (("udp", "tcp"), 514, 514),
    (("udp",), 2905, "PortNotFound"),  # SCTP: never
], ids=lambda v: repr(v))
def test_udp_routes_take_udp_service_ports_and_only_they(services: tuple[str, ...], port: Any,
                                                        want: Any) -> None:
    got = resolve_route(Route("dns", "kube-dns", port, services=services), KUBE_DNS, "kube-system",
                        "cluster.local")
    if isinstance(want, int):
        assert isinstance(got, Resolved)
        assert (got.host, got.port) == ("kube-dns.kube-system.svc.cluster.local", want)
    else:
        assert isinstance(got, Unresolved) and got.reason == want
        assert "udp" in got.message or "UDP" in got.message, got.message


def test_a_tcp_route_on_a_udp_port_says_what_to_do() -> None:
    got = resolve_route(Route("syslog", "kube-dns", 514), KUBE_DNS, "kube-system", "cluster.local")
    assert isinstance(got, Unresolved)
    assert "port 514 is UDP, not TCP" in got.message and "match.services" in got.message
