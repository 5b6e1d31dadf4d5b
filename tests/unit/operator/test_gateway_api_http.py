"""HTTP and HTTPS listeners, certificateRefs, HTTPRoutes and weighted backends (the pure Gateway API
modules): the conditions the spec asks for, and the connector config they render to (the contract of
docs/sidecar.md `routes[].http`, `routes[].backends` and `httpRouters`)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mproxy.ca import CertificateAuthority
from mproxy.config.sidecar import load_sidecar_config
from mproxy_operator.gateway_api import names, render
from mproxy_operator.gateway_api.listeners import CertInputs, certificate_refs, parse_listeners
from mproxy_operator.gateway_api.params import parse_params
from mproxy_operator.gateway_api.render import certs_secret, gateway_config_dict, with_certs
from mproxy_operator.gateway_api.routes import Binding, HttpBinding, Inputs, age, attach
from mproxy_operator.gateway_api.status import gateway_accepted, gateway_status

G = "gateway.networking.k8s.io"
PARAMS = parse_params({"metadata": {"name": "p", "namespace": "sys"},
                       "data": {"edgeURLs": "wss://e.test/m", "tokenSecret": "tok"}})


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@pytest.fixture(scope="module")
def tls_secret() -> dict[str, Any]:
    leaf = CertificateAuthority.create().issue(["*.example.test"])
    data = {"tls.crt": _b64(leaf.cert_pem), "tls.key": _b64(leaf.key_pem)}
    return {"type": "kubernetes.io/tls", "data": data}


def _gw(*listeners: dict[str, Any], ns: str = "app") -> dict[str, Any]:
    return {"metadata": {"name": "g", "namespace": ns, "uid": "u1"}, "spec": {"listeners": list(listeners)}}


def _https(name: str = "https", port: int = 443, **ref: Any) -> dict[str, Any]:
    return {"name": name, "protocol": "HTTPS", "port": port,
            "tls": {"certificateRefs": [{"group": "", "kind": "Secret", "name": "cert", **ref}]}}


def _reasons(lst: Any) -> dict[str, str]:
    return {c: r for c, r, _m in lst.problems}


def test_https_certificate_refs_resolve_as_the_spec_says(tls_secret: dict[str, Any]) -> None:
    other: dict[str, Any] = {"type": "kubernetes.io/tls", "data": dict(tls_secret["data"])}
    key_of_another = CertificateAuthority.create().issue(["x.test"]).key_pem
    cases: list[tuple[dict[str, Any], dict[tuple[str, str], Any], str | None]] = [
        (_https(), {("app", "cert"): tls_secret}, None),
        (_https(), {}, "InvalidCertificateRef"),  # missing
        (_https(group="wrong.group.io"), {("app", "cert"): tls_secret}, "InvalidCertificateRef"),
        (_https(kind="WrongKind"), {("app", "cert"): tls_secret}, "InvalidCertificateRef"),
        (_https(), {("app", "cert"): {"type": "kubernetes.io/tls",
                                      "data": {"tls.crt": _b64(b"Hello world\n"),
                                               "tls.key": _b64(b"Hello world\n")}}}, "InvalidCertificateRef"),
        (_https(), {("app", "cert"): {**other, "type": "Opaque"}}, "InvalidCertificateRef"),
        (_https(), {("app", "cert"): {"type": "kubernetes.io/tls",
                                      "data": {**other["data"], "tls.key": _b64(key_of_another)}}},
         "InvalidCertificateRef"),
        (_https(namespace="certs"), {("certs", "cert"): tls_secret}, "RefNotPermitted"),
    ]
    for spec, secrets, want in cases:
        (lst,) = parse_listeners(_gw(spec), CertInputs(secrets))
        assert lst.accepted and lst.kinds == ("HTTPRoute",), spec
        if want is None:
            assert lst.valid and lst.served and lst.certificates == (("app", "cert"),)
        else:
            assert _reasons(lst) == {"ResolvedRefs": want}, (spec, lst.problems)
            assert not lst.served and lst.certificates == ()
            message = lst.problems[0][2]
            assert "Hello" not in message and "BEGIN" not in message  # never the contents


def test_a_reference_grant_permits_a_certificate_of_another_namespace(tls_secret: dict[str, Any]) -> None:
    def grant(**to: Any) -> dict[str, Any]:
        return {"spec": {"from": [{"group": G, "kind": "Gateway", "namespace": "app"}],
                         "to": [{"group": "", "kind": "Secret", **to}]}}

    wrong_from = {"spec": {"from": [{"group": G, "kind": "HTTPRoute", "namespace": "app"}],
                           "to": [{"group": "", "kind": "Secret"}]}}
    gw = _gw(_https(namespace="certs"))
    assert certificate_refs(gw) == {("certs", "cert")}
    for grants, ok in (([grant()], True), ([grant(name="cert")], True), ([grant(name="other")], False),
                       ([wrong_from], False)):
        (lst,) = parse_listeners(gw, CertInputs({("certs", "cert"): tls_secret}, {"certs": grants}))
        assert lst.served is ok, grants
        if not ok:
            assert _reasons(lst) == {"ResolvedRefs": "RefNotPermitted"}


def test_listener_protocols_modes_and_the_gateway_accepted_condition() -> None:
    ls = {x.name: x for x in parse_listeners(_gw(
        {"name": "http", "protocol": "HTTP", "port": 80},
        {"name": "pass", "protocol": "HTTPS", "port": 8443, "tls": {"mode": "Passthrough"}},
        {"name": "bad", "protocol": "INVALID", "port": 1111},
        {"name": "kinds", "protocol": "HTTP", "port": 8080,
         "allowedRoutes": {"kinds": [{"kind": "InvalidRoute"}]}},
    ))}
    assert ls["http"].served and ls["http"].kinds == ("HTTPRoute",)
    assert _reasons(ls["pass"]) == {"Accepted": "UnsupportedValue"}
    assert _reasons(ls["bad"]) == {"Accepted": "UnsupportedProtocol"} and ls["bad"].kinds == ()
    # An unknown route kind only: accepted, takes nothing (supportedKinds empty), not served.
    assert _reasons(ls["kinds"]) == {"ResolvedRefs": "InvalidRouteKinds"} and ls["kinds"].kinds == ()
    assert ls["kinds"].accepted and not ls["kinds"].served

    only_bad = _gw({"name": "invalid", "protocol": "INVALID", "port": 1111})
    assert gateway_accepted(only_bad, parse_listeners(only_bad))[:2] == (False, "ListenersNotValid")
    mixed = _gw({"name": "http", "protocol": "HTTP", "port": 80},
                {"name": "invalid", "protocol": "INVALID", "port": 1111})
    assert gateway_accepted(mixed, parse_listeners(mixed))[:2] == (True, "ListenersNotValid")
    fine = _gw({"name": "http", "protocol": "HTTP", "port": 80}, _https())
    # A bad certificate does not make the Gateway unaccepted: its listener is Accepted, unresolved.
    assert gateway_accepted(fine, parse_listeners(fine))[:2] == (True, "Accepted")


def test_listener_status_of_an_https_listener_without_a_usable_certificate() -> None:
    gw = _gw(_https(name="tls"), {"name": "http", "protocol": "HTTP", "port": 80})
    st = gateway_status(generation=1, listeners=parse_listeners(gw), attached={"tls": 1}, addresses=(),
                        accepted=(True, "Accepted", ""), programmed=(True, "Programmed", ""), previous={},
                        now="2026-01-01T00:00:00Z")
    by = {x["name"]: {c["type"]: (c["status"], c["reason"]) for c in x["conditions"]}
          for x in st["listeners"]}
    assert by["tls"] == {"Accepted": ("True", "Accepted"), "Conflicted": ("False", "NoConflicts"),
                         "ResolvedRefs": ("False", "InvalidCertificateRef"),
                         "Programmed": ("False", "Invalid")}
    assert by["http"]["Programmed"] == ("True", "Programmed")
    tls = next(x for x in st["listeners"] if x["name"] == "tls")
    assert tls["attachedRoutes"] == 1 and tls["supportedKinds"] == [{"group": G, "kind": "HTTPRoute"}]


GW = _gw(
    {"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {"namespaces": {"from": "All"}}},
    {"name": "shop", "protocol": "HTTP", "port": 80, "hostname": "*.shop.test"},
    _https(name="https", port=443),
    {"name": "tcp", "protocol": "TCP", "port": 5432},
)


def _inputs(tls_secret: dict[str, Any], gw: dict[str, Any] = GW) -> Inputs:
    return Inputs(
        gateway=gw, listeners=parse_listeners(gw, CertInputs({("app", "cert"): tls_secret})),
        services={("app", "web"): {"spec": {"ports": [{"port": 8080}]}},
                  ("app", "pg"): {"spec": {"ports": [{"port": 5432}]}},
                  ("other", "api"): {"spec": {"ports": [{"port": 80}]}}},
        grants={}, namespace_labels={},
    )


def _hr(name: str, refs: list[dict[str, Any]], rules: list[dict[str, Any]], ns: str = "app",
        hostnames: list[str] | None = None, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": refs, "rules": rules}
    if hostnames is not None:
        spec["hostnames"] = hostnames
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": created}, "spec": spec}


def test_an_httproute_renders_to_the_router_contract(tls_secret: dict[str, Any]) -> None:
    rule = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                     "headers": [{"name": "X-Env", "value": "canary"}],
                     "queryParams": [{"type": "Exact", "name": "v", "value": "2"}]}],
        "filters": [
            {"type": "RequestHeaderModifier",
             "requestHeaderModifier": {"set": [{"name": "X-A", "value": "1"}]}},
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                           "replacePrefixMatch": "/"}}},
        ],
        "backendRefs": [{"name": "web", "port": 8080, "weight": 3}, {"name": "gone", "port": 80}],
        "timeouts": {"request": "10s"},
    }
    route = _hr("web", [{"name": "g", "sectionName": "shop"}], [rule],
                hostnames=["a.shop.test", "b.other.test"])
    (res,), (b,) = attach(route, "HTTPRoute", _inputs(tls_secret))
    assert res.accepted[0] and res.listeners == ["shop"]
    assert res.resolved[:2] == (False, "BackendNotFound")  # the missing one; the other still serves
    assert isinstance(b, HttpBinding) and b.hostnames == ("a.shop.test",)  # intersected with *.shop.test
    (r,) = b.rules
    assert r == {
        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                     "headers": [{"type": "Exact", "name": "X-Env", "value": "canary"}],
                     "queryParams": [{"type": "Exact", "name": "v", "value": "2"}]}],
        "filters": rule["filters"],
        "backends": [{"host": "web.app.svc.cluster.local", "port": 8080, "weight": 3},
                     {"weight": 1, "status": 500}],
        "timeouts": {"request": "10s"},
    }


def test_unsupported_filters_and_bad_regexes_are_unsupported_values(tls_secret: dict[str, Any]) -> None:
    inp = _inputs(tls_secret)
    for rule in (
        {"filters": [{"type": "RequestMirror",
                      "requestMirror": {"backendRef": {"name": "web", "port": 8080}}}]},
        {"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}]},
        {"matches": [{"path": {"type": "RegularExpression", "value": "/(unclosed"}}]},
        {"backendRefs": [{"name": "web", "port": 8080, "filters": [{"type": "RequestHeaderModifier"}]}]},
    ):
        (res,), got = attach(_hr("x", [{"name": "g", "sectionName": "http"}], [rule]), "HTTPRoute", inp)
        assert res.accepted[:2] == (False, "UnsupportedValue") and not got and not res.listeners, rule


def test_httproute_parents_refusals(tls_secret: dict[str, Any]) -> None:
    inp = _inputs(tls_secret)
    ok_rule = [{"backendRefs": [{"name": "web", "port": 8080}]}]
    (res,), _ = attach(_hr("x", [{"name": "g", "sectionName": "nope"}], ok_rule), "HTTPRoute", inp)
    assert res.accepted[:2] == (False, "NoMatchingParent")
    # shop allows its own namespace only, http allows All: from "other" only http takes it.
    (res,), got = attach(_hr("x", [{"name": "g", "namespace": "app"}],
                             [{"backendRefs": [{"name": "api", "port": 80}]}], ns="other"), "HTTPRoute", inp)
    assert res.listeners == ["http"] and [b.listener.name for b in got] == ["http"]
    (res,), _ = attach(_hr("x", [{"name": "g", "sectionName": "shop"}], ok_rule, hostnames=["x.test"]),
                       "HTTPRoute", inp)
    assert res.accepted[:2] == (False, "NoMatchingListenerHostname")
    (res,), _ = attach(_hr("x", [{"name": "g", "sectionName": "tcp"}], ok_rule), "HTTPRoute", inp)
    assert res.accepted[:2] == (False, "NotAllowedByListeners")
    (res,), (b,) = attach(_hr("x", [{"name": "g", "sectionName": "http"}],
                              [{"backendRefs": [{"group": "x.io", "kind": "Thing", "name": "t"}]}]),
                          "HTTPRoute", inp)
    assert res.accepted[0] and res.resolved[:2] == (False, "InvalidKind")
    assert isinstance(b, HttpBinding) and b.rules[0]["backends"] == [{"weight": 1, "status": 500}]
    (res,), _ = attach(_hr("x", [{"name": "g", "sectionName": "http"}],
                           [{"backendRefs": [{"name": "api", "namespace": "other", "port": 80}]}]),
                       "HTTPRoute", inp)
    assert res.resolved[:2] == (False, "RefNotPermitted")


def test_an_https_listener_without_a_certificate_counts_routes_and_serves_none() -> None:
    inp = _inputs({"type": "Opaque", "data": {}})
    (res,), got = attach(_hr("x", [{"name": "g", "sectionName": "https"}],
                             [{"backendRefs": [{"name": "web", "port": 8080}]}]), "HTTPRoute", inp)
    assert res.accepted[0] and res.listeners == ["https"] and got == []


def test_the_gateway_config_routes_routers_and_weights(
    tls_secret: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "HTTP_ROUTERS", True)
    monkeypatch.setattr(render, "WEIGHTED_BACKENDS", True)
    inp = _inputs(tls_secret)
    routes = sorted([
        _hr("newer", [{"name": "g"}], [{"backendRefs": [{"name": "web", "port": 8080}]}],
            created="2026-01-02T00:00:00Z"),
        _hr("older", [{"name": "g"}], [{"backendRefs": [{"name": "web", "port": 8080}]}]),
    ], key=age)
    tcp = {"metadata": {"name": "db", "namespace": "app"},
           "spec": {"parentRefs": [{"name": "g", "sectionName": "tcp"}],
                    "rules": [{"backendRefs": [{"name": "pg", "port": 5432, "weight": 3},
                                               {"name": "pg", "port": 5432, "weight": 0},
                                               {"name": "missing", "port": 5432, "weight": 1}]}]}}
    bindings: list[Binding | HttpBinding] = []
    for r in routes:
        bindings += attach(r, "HTTPRoute", inp)[1]
    bindings += attach(tcp, "TCPRoute", inp)[1]
    config = gateway_config_dict(PARAMS, bindings, inp.listeners)
    stream = {r["name"]: r for r in config["routes"]}
    # Most specific first: the wildcard listener, then the catch-alls (other services or ports).
    assert config["routes"][0]["name"] == "http.shop"
    assert set(stream) == {"http.shop", "http.http", "https.https", "tcproute.app.db.0.tcp"}
    assert stream["http.shop"] == {"name": "http.shop", "http": "shop",
                                   "match": {"services": ["http"], "ports": [80],
                                             "hostnames": ["*.shop.test"]}}
    assert stream["https.https"]["match"] == {"services": ["https"], "ports": [443]}
    assert stream["tcproute.app.db.0.tcp"]["backends"] == [
        {"host": "pg.app.svc.cluster.local", "port": 5432, "weight": 3},
        {"host": "pg.app.svc.cluster.local", "port": 5432, "weight": 0},
        {"weight": 1, "refuse": True},
    ]
    routers = {r["name"]: r for r in config["httpRouters"]}
    assert [r["name"] for r in routers["http"]["routes"]] == ["httproute.app.older", "httproute.app.newer"]
    assert routers["shop"]["routes"][0]["hostnames"] == ["*.shop.test"]
    crt, key = names.cert_files("app", "cert")
    assert routers["https"]["tls"] == {"certificates": [
        {"certFile": f"{names.CERTS_DIR}/{crt}", "keyFile": f"{names.CERTS_DIR}/{key}"}]}
    assert "tls" not in routers["http"]
    # The connector's own loader takes it: the stream routes, routers, rules and certificate paths.
    loaded = load_sidecar_config(config)
    assert {r.name for r in loaded.http_routers} == {"http", "shop", "https"}
    assert {r.name: r.http for r in loaded.routes}["http.shop"] == "shop"


def test_an_httproute_with_every_supported_filter_passes_the_sidecar_schema(
    tls_secret: dict[str, Any],
) -> None:
    inp = _inputs(tls_secret)
    rules: list[dict[str, Any]] = [
        {"matches": [{"path": {"type": "Exact", "value": "/a"},
                      "headers": [{"type": "RegularExpression", "name": "X-R", "value": "^v[0-9]+$"}]}],
         "filters": [{"type": "RequestHeaderModifier",
                      "requestHeaderModifier": {"set": [{"name": "X-A", "value": "1"}], "remove": ["X-B"]}},
                     {"type": "ResponseHeaderModifier",
                      "responseHeaderModifier": {"add": [{"name": "X-C", "value": "2"}]}}],
         "backendRefs": [{"name": "web", "port": 8080}],
         "timeouts": {"request": "10s", "backendRequest": "5s"}},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "scheme": "https", "statusCode": 301,
             "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
         "filters": [{"type": "URLRewrite", "urlRewrite": {
             "hostname": "api.internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
         "backendRefs": [{"name": "web", "port": 8080, "weight": 1},
                         {"name": "nope", "port": 1, "weight": 1}]},
        {"matches": [{"method": "POST", "queryParams": [{"name": "v", "value": "2"}]}]},  # no backends: 500
    ]
    bindings = attach(_hr("all", [{"name": "g", "sectionName": "http"}], rules), "HTTPRoute", inp)[1]
    loaded = load_sidecar_config(gateway_config_dict(PARAMS, bindings, inp.listeners))
    (router,) = [r for r in loaded.http_routers if r.name == "http"]
    (route,) = router.routes
    assert len(route.rules) == 4


def test_without_weighted_backends_the_heaviest_valid_one_is_rendered(
    tls_secret: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "WEIGHTED_BACKENDS", False)
    monkeypatch.setattr(render, "HTTP_ROUTERS", False)
    inp = _inputs(tls_secret)
    tcp = {"metadata": {"name": "db", "namespace": "app"},
           "spec": {"parentRefs": [{"name": "g", "sectionName": "tcp"}],
                    "rules": [{"backendRefs": [{"name": "missing", "port": 5432, "weight": 9},
                                               {"name": "pg", "port": 5432, "weight": 2}]}]}}
    config = gateway_config_dict(PARAMS, attach(tcp, "TCPRoute", inp)[1], inp.listeners)
    assert config["routes"] == [{"name": "tcproute.app.db.0.tcp",
                                 "match": {"services": ["tcp"], "ports": [5432]},
                                 "backend": {"host": "pg.app.svc.cluster.local", "port": 5432}}]
    assert not config.get("httpRouters")


def test_the_certs_secret_and_its_mount(tls_secret: dict[str, Any]) -> None:
    gw = _gw(_https())
    owner = {"apiVersion": f"{G}/v1", "kind": "Gateway", "name": "g", "uid": "u1", "controller": True}
    sec = certs_secret(gw, owner, {("app", "cert"): tls_secret}, [("app", "cert")])
    crt, key = names.cert_files("app", "cert")
    assert sec["metadata"]["name"] == "mproxy-gateway-g-certs" and sec["metadata"]["namespace"] == "app"
    assert sec["metadata"]["ownerReferences"] == [owner]
    assert sec["data"] == {crt: tls_secret["data"]["tls.crt"], key: tls_secret["data"]["tls.key"]}
    dep = {"spec": {"template": {"spec": {"containers": [{"name": "mproxy", "volumeMounts": [{"name": "a"}]}],
                                          "volumes": [{"name": "a"}]}}}}
    pod = with_certs(dep, sec["metadata"]["name"])["spec"]["template"]["spec"]
    assert pod["volumes"][-1] == {"name": names.CERTS_VOLUME,
                                  "secret": {"secretName": "mproxy-gateway-g-certs"}}
    assert pod["containers"][0]["volumeMounts"][-1] == {
        "name": names.CERTS_VOLUME, "mountPath": names.CERTS_DIR, "readOnly": True}


def test_weighted_backends_pass_the_sidecar_schema(tls_secret: dict[str, Any]) -> None:
    """With the sidecar's weighted backends, a TCPRoute's backendRefs are all rendered, an invalid one
    as a refused share, and the connector's own loader takes the config."""
    assert render.WEIGHTED_BACKENDS
    inp = _inputs(tls_secret)
    tcp = {"metadata": {"name": "db", "namespace": "app"},
           "spec": {"parentRefs": [{"name": "g", "sectionName": "tcp"}],
                    "rules": [{"backendRefs": [{"name": "pg", "port": 5432, "weight": 3},
                                               {"name": "missing", "port": 5432, "weight": 1},
                                               {"name": "pg", "port": 5432, "weight": 0}]}]}}
    (route,) = render.gateway_config(PARAMS, attach(tcp, "TCPRoute", inp)[1]).routes
    assert route.backend is None
    assert [(b.weight, b.refuse) for b in route.backends] == [(3, False), (1, True), (0, False)]
    assert {(b.host, b.port) for b in route.backends if not b.refuse} == {("pg.app.svc.cluster.local", 5432)}
