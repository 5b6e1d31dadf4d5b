"""The pure Gateway API modules: parameters, listeners, hostname intersection, route attachment and
backend resolution (ReferenceGrant), the rendered connector config."""

from __future__ import annotations

from typing import Any

import pytest

from mproxy_operator.gateway_api.listeners import intersect, parse_listeners
from mproxy_operator.gateway_api.params import Address, ParamsError, parse_params
from mproxy_operator.gateway_api.render import gateway_config
from mproxy_operator.gateway_api.routes import Backend, Binding, Inputs, age, attach, resolve_backend

G = "gateway.networking.k8s.io"


def _cm(**data: str) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "sys"},
            "data": {"edgeURLs": "wss://e.test/m", "tokenSecret": "tok", **data}}


def test_params() -> None:
    p = parse_params(_cm(addresses="203.0.113.7, Edge.Example.test", replicas="3"))
    assert p.edge_urls == ("wss://e.test/m",) and p.token_secret == "tok" and p.replicas == 3
    assert p.addresses == (Address("IPAddress", "203.0.113.7"), Address("Hostname", "edge.example.test"))


@pytest.mark.parametrize(("data", "words"), [
    ({"edgeURLs": ""}, "edgeURLs is required"),
    ({"edgeURLs": "https://e.test"}, "ws:// or wss://"),
    ({"tokenSecret": ""}, "tokenSecret is required"),
    ({"replicas": "many"}, "replicas must be"),
    ({"addresses": "not_a name!"}, "neither an IP"),
])
def test_bad_params_name_the_key(data: dict[str, str], words: str) -> None:
    with pytest.raises(ParamsError, match=words) as exc:
        parse_params(_cm(**data))
    assert "ConfigMap sys/p" in str(exc.value)


def _gw(*listeners: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "g", "namespace": "app"}, "spec": {"listeners": list(listeners)}}


def test_listener_refusals_carry_the_spec_reasons() -> None:
    ls = {x.name: x for x in parse_listeners(_gw(
        {"name": "http", "protocol": "HTTP", "port": 80},
        {"name": "term", "protocol": "TLS", "port": 443},  # tls.mode defaults to Terminate
        {"name": "a", "protocol": "TCP", "port": 5000},
        {"name": "b", "protocol": "TLS", "port": 5000, "tls": {"mode": "Passthrough"}},
        {"name": "kinds", "protocol": "TCP", "port": 6000,
         "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}, {"group": G, "kind": "TCPRoute"}]}},
        {"name": "ok", "protocol": "TLS", "port": 8443, "tls": {"mode": "Passthrough"}},
    ))}
    reasons = {n: {c: r for c, r, _m in x.problems} for n, x in ls.items()}
    assert reasons["http"] == {} and ls["http"].kinds == ("HTTPRoute",) and ls["http"].served
    assert reasons["term"] == {"Accepted": "UnsupportedValue"}
    assert ls["term"].kinds == ()  # what cannot be served lists no supportedKinds
    assert reasons["a"] == reasons["b"] == {"Conflicted": "ProtocolConflict"}
    assert reasons["kinds"] == {"ResolvedRefs": "InvalidRouteKinds"} and ls["kinds"].kinds == ("TCPRoute",)
    assert ls["ok"].valid and ls["ok"].kinds == ("TLSRoute",)


@pytest.mark.parametrize(("listener", "route", "want"), [
    (None, (), ()),
    ("*.example.test", (), ("*.example.test",)),
    ("*.example.test", ("a.example.test", "other.test"), ("a.example.test",)),
    ("a.example.test", ("*.example.test",), ("a.example.test",)),
    ("*.example.test", ("example.test",), None),  # a wildcard never covers its own apex
    ("a.example.test", ("b.example.test",), None),
])
def test_hostname_intersection(listener: str | None, route: tuple[str, ...], want: Any) -> None:
    assert intersect(listener, route) == want


def _route(name: str, ns: str, refs: list[dict[str, Any]], backends: list[dict[str, Any]],
           hostnames: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": refs, "rules": [{"backendRefs": backends}]}
    if hostnames:
        spec["hostnames"] = hostnames
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def _svc(port: int) -> dict[str, Any]:
    return {"spec": {"ports": [{"port": port}]}}


GW = _gw(
    {"name": "tls", "protocol": "TLS", "port": 443, "hostname": "*.example.test",
     "tls": {"mode": "Passthrough"}},
    {"name": "tcp", "protocol": "TCP", "port": 5432, "allowedRoutes": {"namespaces": {"from": "All"}}},
)


def _inputs(grants: dict[str, list[dict[str, Any]]] | None = None) -> Inputs:
    return Inputs(gateway=GW, listeners=parse_listeners(GW),
                  services={("app", "web"): _svc(443), ("db", "pg"): _svc(5432)},
                  grants=grants or {}, namespace_labels={})


def test_attach_and_render_most_specific_first() -> None:
    inp = _inputs()
    wild, r1 = attach(_route("w", "app", [{"name": "g"}], [{"name": "web", "port": 443}]), "TLSRoute", inp)
    exact, r2 = attach(_route("e", "app", [{"name": "g", "sectionName": "tls"}],
                              [{"name": "web", "port": 443}], ["a.example.test"]), "TLSRoute", inp)
    assert wild[0].listeners == ["tls"] and exact[0].listeners == ["tls"]
    config = gateway_config(parse_params(_cm()), [*r1, *r2])
    assert [r.match.hostnames for r in config.routes] == [("a.example.test",), ("*.example.test",)]
    assert config.routes[0].match.services == ("https",) and config.routes[0].match.ports == (443,)


def test_refusals_of_routes() -> None:
    inp = _inputs()
    (res,), _ = attach(_route("x", "app", [{"name": "g", "sectionName": "nope"}], []), "TCPRoute", inp)
    assert res.accepted[:2] == (False, "NoMatchingParent")
    (res,), _ = attach(_route("x", "other", [{"name": "g", "namespace": "app", "sectionName": "tls"}],
                              [{"name": "web", "namespace": "app", "port": 443}]), "TLSRoute", inp)
    assert res.accepted[:2] == (False, "NotAllowedByListeners")  # tls takes routes of its namespace only
    (res,), _ = attach(_route("x", "app", [{"name": "g"}], [{"name": "web", "port": 443}], ["b.other.test"]),
                       "TLSRoute", inp)
    assert res.accepted[:2] == (False, "NoMatchingListenerHostname")
    (res,), got = attach(_route("x", "app", [{"name": "g", "sectionName": "tcp"}],
                                [{"name": "web", "port": 80}, {"kind": "Pod", "name": "p"}]), "TCPRoute", inp)
    assert res.resolved[:2] == (False, "BackendNotFound") and "InvalidKind" not in res.resolved[1]
    assert "only Services" in res.resolved[2]
    # The rule stays, every share refused: the route's streams are closed, not sent elsewhere.
    (b,) = got
    assert isinstance(b, Binding) and [x.valid for x in b.backends] == [False, False] and b.backend is None
    assert attach(_route("x", "app", [{"name": "other-gw"}], []), "TCPRoute", inp) == ([], [])


def test_cross_namespace_backends_need_a_reference_grant() -> None:
    route = _route("x", "app", [{"name": "g", "sectionName": "tcp"}],
                   [{"name": "pg", "namespace": "db", "port": 5432}])
    (res,), got = attach(route, "TCPRoute", _inputs())
    assert res.resolved[:2] == (False, "RefNotPermitted")
    assert all(isinstance(b, Binding) and b.backend is None for b in got)
    grant = {"spec": {"from": [{"group": G, "kind": "TCPRoute", "namespace": "app"}],
                      "to": [{"group": "", "kind": "Service", "name": "pg"}]}}
    wrong_kind = {"spec": {"from": [{"group": G, "kind": "TLSRoute", "namespace": "app"}],
                           "to": [{"group": "", "kind": "Service"}]}}
    (res,), _ = attach(route, "TCPRoute", _inputs({"db": [wrong_kind]}))
    assert res.resolved[1] == "RefNotPermitted"
    (res,), (b,) = attach(route, "TCPRoute", _inputs({"db": [grant]}))
    assert isinstance(b, Binding) and b.backend is not None
    assert res.resolved[0] and (b.backend.host, b.backend.port) == ("pg.db.svc.cluster.local", 5432)


def test_the_oldest_of_two_tcp_routes_on_one_listener_is_served() -> None:
    """Both attach (attachedRoutes counts both), but the connector's first match is the oldest route."""
    def route(name: str, created: str, service: str) -> dict[str, Any]:
        r = _route(name, "app", [{"name": "g", "sectionName": "tcp"}], [{"name": service, "port": 443}])
        r["metadata"]["creationTimestamp"] = created
        return r

    inp = _inputs()
    newer = route("a-newer", "2026-01-02T00:00:00Z", "web")
    older = route("z-older", "2026-01-01T00:00:00Z", "web")
    bindings = []
    for r in sorted([newer, older], key=age):  # as the reconciler lists them
        bindings += attach(r, "TCPRoute", inp)[1]
    config = gateway_config(parse_params(_cm()), bindings)
    assert [r.name.split(".")[2] for r in config.routes] == ["z-older", "a-newer"]


def test_a_headless_backend_is_dialled_on_its_target_port() -> None:
    headless = {"spec": {"clusterIP": "None", "ports": [{"port": 8080, "targetPort": 3000}]}}
    named = {"spec": {"clusterIP": "None", "ports": [{"port": 8080, "targetPort": "http"}]}}
    inp = Inputs(gateway=GW, listeners=parse_listeners(GW), grants={}, namespace_labels={},
                 services={("app", "h"): headless, ("app", "n"): named, ("app", "c"): _svc(8080)})
    got = resolve_backend({"name": "h", "port": 8080}, "TCPRoute", "app", inp)
    assert isinstance(got, Backend) and (got.host, got.port) == ("h.app.svc.cluster.local", 3000)
    got = resolve_backend({"name": "c", "port": 8080}, "TCPRoute", "app", inp)
    assert isinstance(got, Backend) and got.port == 8080  # a cluster IP translates the Service port
    got = resolve_backend({"name": "n", "port": 8080}, "TCPRoute", "app", inp)
    assert isinstance(got, tuple) and got[0] == "BackendNotFound" and "named targetPort 'http'" in got[1]
