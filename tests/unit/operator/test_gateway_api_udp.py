"""UDPRoute (Gateway API): UDP listeners, attachment by sectionName/port, UDP backend ports and
ReferenceGrant, and the rendered `udp` routes the connector's own schema accepts."""

from __future__ import annotations

from typing import Any

from mproxy_operator.gateway_api import names
from mproxy_operator.gateway_api.listeners import parse_listeners
from mproxy_operator.gateway_api.params import parse_params
from mproxy_operator.gateway_api.render import gateway_config, gateway_config_dict
from mproxy_operator.gateway_api.routes import Binding, Inputs, age, attach
from mproxy_operator.gateway_api.status import gateway_status

G = "gateway.networking.k8s.io"
PARAMS = parse_params({"metadata": {"name": "p", "namespace": "sys"},
                       "data": {"edgeURLs": "wss://e.test/m", "tokenSecret": "tok"}})


def _gw(*listeners: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "g", "namespace": "app"}, "spec": {"listeners": list(listeners)}}


GW = _gw(
    {"name": "dns", "protocol": "UDP", "port": 5300},
    {"name": "udp-2", "protocol": "UDP", "port": 5310},
    {"name": "tcp", "protocol": "TCP", "port": 5300},  # a TCP and a UDP listener may share a port
    {"name": "tls", "protocol": "TLS", "port": 443, "tls": {"mode": "Passthrough"}},
)


def _udp_svc(*ports: int, tcp: tuple[int, ...] = ()) -> dict[str, Any]:
    return {"spec": {"ports": [*({"port": p, "protocol": "UDP"} for p in ports),
                               *({"port": p, "protocol": "TCP"} for p in tcp)]}}


SERVICES = {
    ("app", "coredns"): _udp_svc(53, tcp=(53,)),
    ("app", "web"): _udp_svc(tcp=(8080,)),  # TCP only
    ("backend", "echo"): _udp_svc(8080),
}


def _inputs(grants: dict[str, list[dict[str, Any]]] | None = None) -> Inputs:
    return Inputs(gateway=GW, listeners=parse_listeners(GW), services=SERVICES, grants=grants or {},
                  namespace_labels={})


def _route(name: str, refs: list[dict[str, Any]], backends: list[dict[str, Any]],
           created: str = "") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "app", "creationTimestamp": created},
            "spec": {"parentRefs": refs, "rules": [{"backendRefs": backends}]}}


def test_udp_listeners_take_udproutes_and_conflict_only_with_udp() -> None:
    ls = {x.name: x for x in parse_listeners(_gw(
        {"name": "a", "protocol": "UDP", "port": 53},
        {"name": "b", "protocol": "UDP", "port": 53},
        {"name": "c", "protocol": "TCP", "port": 53},
        {"name": "d", "protocol": "UDP", "port": 54,
         "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}, {"group": G, "kind": "UDPRoute"}]}},
        {"name": "e", "protocol": "UDP", "port": 55, "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}},
    ))}
    reasons = {n: {c: r for c, r, _m in x.problems} for n, x in ls.items()}
    assert reasons["a"] == reasons["b"] == {"Conflicted": "HostnameConflict"}
    assert reasons["c"] == {} and ls["c"].kinds == ("TCPRoute",)
    assert reasons["d"] == {"ResolvedRefs": "InvalidRouteKinds"} and ls["d"].kinds == ("UDPRoute",)
    assert ls["e"].kinds == () and not ls["e"].served  # takes no kind mproxy serves: nothing attaches
    assert names.ROUTE_KIND_FOR_PROTOCOL["UDP"] == "UDPRoute"
    assert names.ROUTE_PLURALS["UDPRoute"] == "udproutes"
    assert "UDPRoute" in names.SUPPORTED_FEATURES


def test_udproute_renders_a_udp_route_on_the_listener_port() -> None:
    (res,), got = attach(_route("dns", [{"name": "g", "sectionName": "dns"}],
                                [{"name": "coredns", "port": 53}]), "UDPRoute", _inputs())
    assert res.accepted[0] and res.resolved[0] and res.listeners == ["dns"]
    (route,) = gateway_config(PARAMS, got).routes
    assert route.name == "udproute.app.dns.0.dns"
    assert route.match.services == ("udp",) and route.match.ports == (5300,) and not route.match.hostnames
    assert [(b.host, b.port, b.refuse) for b in route.backends] == [
        ("coredns.app.svc.cluster.local", 53, False)]


def test_parent_ref_by_port_section_or_neither() -> None:
    inp = _inputs()
    backends = [{"name": "coredns", "port": 53}]
    (res,), _ = attach(_route("r", [{"name": "g", "port": 5310}], backends), "UDPRoute", inp)
    assert res.listeners == ["udp-2"]
    (res,), _ = attach(_route("r", [{"name": "g", "sectionName": "udp-2", "port": 5310}], backends),
                       "UDPRoute", inp)
    assert res.listeners == ["udp-2"]
    (res,), _ = attach(_route("r", [{"name": "g", "sectionName": "udp-2", "port": 5300}], backends),
                       "UDPRoute", inp)
    assert res.accepted[:2] == (False, "NoMatchingParent")
    (res,), got = attach(_route("r", [{"name": "g"}], backends), "UDPRoute", inp)
    assert res.listeners == ["dns", "udp-2"]  # every UDP listener, never the TCP or TLS one
    config = gateway_config(PARAMS, got)
    assert sorted(r.match.ports[0] for r in config.routes) == [5300, 5310]


def test_udproute_on_a_tls_listener_is_not_allowed() -> None:
    dns = [{"name": "coredns", "port": 53}]
    (res,), got = attach(_route("r", [{"name": "g", "sectionName": "tls"}], dns), "UDPRoute", _inputs())
    assert res.accepted[:2] == (False, "NotAllowedByListeners") and res.listeners == [] and got == []
    (res,), _ = attach(_route("r", [{"name": "g", "sectionName": "dns"}], dns), "TCPRoute", _inputs())
    assert res.accepted[:2] == (False, "NotAllowedByListeners")


def test_backend_needs_a_udp_port_and_missing_ones_are_refused_shares() -> None:
    inp = _inputs()
    (res,), (b,) = attach(_route("r", [{"name": "g", "sectionName": "dns"}],
                                 [{"name": "web", "port": 8080, "weight": 2},
                                  {"name": "gone", "port": 53, "weight": 1},
                                  {"name": "coredns", "port": 53, "weight": 1}]), "UDPRoute", inp)
    assert res.accepted[0] and res.resolved[:2] == (False, "BackendNotFound")
    assert "has no UDP port 8080 (its UDP ports: none)" in res.resolved[2]
    assert "gone does not exist" in res.resolved[2]
    assert isinstance(b, Binding) and [x.valid for x in b.backends] == [False, False, True]
    (route,) = gateway_config(PARAMS, [b]).routes
    assert [(x.weight, x.refuse) for x in route.backends] == [(2, True), (1, True), (1, False)]
    # The TCP port of the same number does not count for a UDPRoute, nor the UDP one for a TCPRoute.
    echo = [{"name": "echo", "namespace": "backend", "port": 8080}]
    (res,), _ = attach(_route("r", [{"name": "g", "sectionName": "tcp"}], echo), "TCPRoute",
                       _inputs({"backend": [_grant("TCPRoute")]}))
    assert res.resolved[:2] == (False, "BackendNotFound")


def _grant(kind: str) -> dict[str, Any]:
    return {"spec": {"from": [{"group": G, "kind": kind, "namespace": "app"}],
                     "to": [{"group": "", "kind": "Service", "name": "echo"}]}}


def test_cross_namespace_udp_backend_needs_a_udproute_grant() -> None:
    route = _route("r", [{"name": "g", "sectionName": "dns"}],
                   [{"name": "echo", "namespace": "backend", "port": 8080}])
    (res,), (b,) = attach(route, "UDPRoute", _inputs())
    assert res.accepted[0] and res.resolved[:2] == (False, "RefNotPermitted")
    assert isinstance(b, Binding) and b.backend is None
    (res,), _ = attach(route, "UDPRoute", _inputs({"backend": [_grant("TCPRoute")]}))
    assert res.resolved[1] == "RefNotPermitted"  # a grant for TCPRoutes is not one for UDPRoutes
    (res,), (b,) = attach(route, "UDPRoute", _inputs({"backend": [_grant("UDPRoute")]}))
    assert res.resolved[0] and isinstance(b, Binding) and b.backend is not None
    assert (b.backend.host, b.backend.port) == ("echo.backend.svc.cluster.local", 8080)


def test_two_udproutes_on_one_listener_both_count_the_oldest_is_served_first() -> None:
    inp = _inputs()
    newer = _route("a-newer", [{"name": "g", "sectionName": "dns"}], [{"name": "coredns", "port": 53}],
                   "2026-01-02T00:00:00Z")
    older = _route("z-older", [{"name": "g", "sectionName": "dns"}],
                   [{"name": "echo", "namespace": "backend", "port": 8080}], "2026-01-01T00:00:00Z")
    bindings: list[Any] = []
    attached: dict[str, int] = {}
    for r in sorted([newer, older], key=age):
        (res,), got = attach(r, "UDPRoute", _inputs({"backend": [_grant("UDPRoute")]}))
        assert res.accepted[0]
        bindings += got
        for lst in res.listeners:
            attached[lst] = attached.get(lst, 0) + 1
    config = gateway_config_dict(PARAMS, bindings, inp.listeners)
    assert [r["name"] for r in config["routes"]] == [
        "udproute.app.z-older.0.dns", "udproute.app.a-newer.0.dns"]
    st = gateway_status(generation=1, listeners=inp.listeners, attached=attached, addresses=(),
                        accepted=(True, "Accepted", "ok"), programmed=(True, "Programmed", "ok"),
                        previous={}, now="2026-01-01T00:00:00Z")
    dns = next(x for x in st["listeners"] if x["name"] == "dns")
    assert dns["attachedRoutes"] == 2 and dns["supportedKinds"] == [{"group": G, "kind": "UDPRoute"}]
