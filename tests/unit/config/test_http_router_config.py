"""The httpRouters schema (mproxy/config/http_router.py) and routes[].http: the operator's contract for
Gateway API HTTPRoutes. Valid configs round-trip through to_dict; each error names the field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mproxy.config.errors import ConfigError
from mproxy.config.http_router import duration_seconds
from mproxy.config.sidecar import load_sidecar_config

FULL = """
edge: {urls: [ws://e/]}
routes:
  - name: gw.http.80
    match: {services: [http], ports: [80], hostnames: ["*.example.com"]}
    http: web-80
  - name: tcp
    match: {services: [tcp]}
    backend: {host: db, port: 5432}
httpRouters:
  - name: web-80
    maxConcurrentRequests: 50
    tls:
      certificates:
        - {certFile: /etc/mproxy/certs/a.crt, keyFile: /etc/mproxy/certs/a.key}
    routes:
      - name: httproute.ns.name
        hostnames: ["Example.com", "*.example.com"]
        rules:
          - matches:
              - path: {type: PathPrefix, value: /api}
                headers: [{type: Exact, name: X-Env, value: canary}, {type: RegularExpression, name: X-R,
                          value: "v[0-9]+"}]
                queryParams: [{name: v, value: 2}]
                method: GET
            filters:
              - type: RequestHeaderModifier
                requestHeaderModifier: {set: [{name: X-A, value: "1"}], add: [{name: X-C, value: ""}],
                                        remove: [X-B]}
              - type: ResponseHeaderModifier
                responseHeaderModifier: {remove: [Server]}
              - type: URLRewrite
                urlRewrite: {hostname: x.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
            backends:
              - {host: svc.ns.svc.cluster.local, port: 8080, weight: 3}
              - {weight: 1, status: 500}
            timeouts: {request: 2m, backendRequest: 1m5s}
      - name: httproute.ns.redirect
        rules:
          - filters:
              - type: RequestRedirect
                requestRedirect: {scheme: https, hostname: x.test, port: 8443, statusCode: 301,
                                  path: {type: ReplaceFullPath, replaceFullPath: /x}}
"""


def test_full_router_loads_and_round_trips() -> None:
    cfg = load_sidecar_config(FULL)
    assert cfg.routes[0].http == "web-80" and cfg.routes[0].backend is None
    assert cfg.routes[1].backend is not None and cfg.routes[1].http is None
    (router,) = cfg.http_routers
    assert router.max_concurrent_requests == 50
    assert router.tls is not None and router.tls.certificates[0].cert_file == "/etc/mproxy/certs/a.crt"
    route = router.routes[0]
    assert route.hostnames == ("example.com", "*.example.com")  # lowercased
    rule = route.rules[0]
    m = rule.matches[0]
    assert (m.path.type, m.path.value, m.method) == ("PathPrefix", "/api", "GET")
    assert m.query_params[0].value == "2" and m.query_params[0].type == "Exact"  # YAML 2 is meant as "2"
    assert rule.filters[0].request_header_modifier is not None
    assert rule.filters[0].request_header_modifier.add[0].value == ""
    assert [b.weight for b in rule.backends] == [3, 1] and rule.backends[1].status == 500
    assert duration_seconds(rule.timeouts.backend_request) == 65.0
    redirect = router.routes[1].rules[0].filters[0].request_redirect
    assert redirect is not None and (redirect.status_code, redirect.port) == (301, 8443)
    # to_dict -> YAML -> load gives the same config, and to_dict again the same mapping
    again = load_sidecar_config(yaml.safe_dump(cfg.to_dict()))
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert "backend" not in cfg.to_dict()["routes"][0]


def test_defaults_are_the_spec_defaults() -> None:
    cfg = load_sidecar_config("""
edge: {urls: [ws://e/]}
httpRouters: [{name: r, routes: [{name: x, rules: [{matches: [{}], filters: [{type: RequestRedirect,
  requestRedirect: {}}]}, {}]}]}]
""")
    rule = cfg.http_routers[0].routes[0].rules[0]
    assert (rule.matches[0].path.type, rule.matches[0].path.value) == ("PathPrefix", "/")
    assert rule.filters[0].request_redirect is not None
    assert rule.filters[0].request_redirect.status_code == 302
    assert cfg.http_routers[0].max_concurrent_requests == 1000
    assert cfg.http_routers[0].tls is None
    assert load_sidecar_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("text", "d"), [("10s", 10.0), ("1h", 3600.0), ("500ms", 0.5), ("1m30s", 90.0),
                                          ("1h2m3s4ms", 3723.004), ("0s", None), (None, None)])
def test_durations(text: str | None, d: float | None) -> None:
    assert duration_seconds(text) == d


def _router(rule: dict[str, Any] | None = None, **router: Any) -> dict[str, Any]:
    return {"edge": {"urls": ["ws://e/"]},
            "httpRouters": [{"name": "r", "routes": [{"name": "x", "rules": [rule or {}]}], **router}]}


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown key", _router({"matchs": []}),
     r"^httpRouters\[0\]\.routes\[0\]\.rules\[0\]\.matchs: unknown field"),
    ("path type case", _router({"matches": [{"path": {"type": "pathprefix"}}]}),
     r"matches\[0\]\.path\.type: must be one of PathPrefix, Exact, RegularExpression \(got 'pathprefix'\)"),
    ("relative path", _router({"matches": [{"path": {"value": "api"}}]}),
     r"matches\[0\]\.path\.value: must be a path starting with /"),
    ("bad regex", _router({"matches": [{"path": {"type": "RegularExpression", "value": "/(["}}]}),
     r"path\.value: is not a valid \(Python\) regular expression"),
    ("header name", _router({"matches": [{"headers": [{"name": "X Y", "value": "1"}]}]}),
     r"headers\[0\]\.name: must be an HTTP header name"),
    ("header value", _router({"matches": [{"headers": [{"name": "X", "value": "a\nb"}]}]}),
     r"headers\[0\]\.value: must be at most 4096 characters, with no CR, LF or NUL"),
    ("missing value", _router({"matches": [{"queryParams": [{"name": "v"}]}]}),
     r"queryParams\[0\]\.value: is required"),
    ("method", _router({"matches": [{"method": "get"}]}), r"matches\[0\]\.method: must be one of GET"),
    ("filter needs its key", _router({"filters": [{"type": "URLRewrite"}]}),
     r"filters\[0\]\.urlRewrite: is required when type is URLRewrite"),
    ("filter other key", _router({"filters": [{"type": "URLRewrite", "urlRewrite": {},
                                               "requestRedirect": {}}]}),
     r"filters\[0\]\.requestRedirect: must not be set when type is URLRewrite"),
    ("unsupported filter", _router({"filters": [{"type": "RequestMirror"}]}),
     r"filters\[0\]\.type: RequestMirror is not supported by the sidecar"),
    ("twice", _router({"filters": [{"type": "URLRewrite", "urlRewrite": {}},
                                   {"type": "URLRewrite", "urlRewrite": {}}]}),
     r"filters\[1\]\.type: URLRewrite is already filters\[0\]"),
    ("redirect and rewrite", _router({"filters": [{"type": "URLRewrite", "urlRewrite": {}},
                                                  {"type": "RequestRedirect", "requestRedirect": {}}]}),
     r"rules\[0\]\.filters: must not hold both RequestRedirect and URLRewrite"),
    ("prefix replacement needs prefix matches",
     _router({"matches": [{"path": {"type": "Exact", "value": "/a"}}], "filters": [
         {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                        "replacePrefixMatch": "/"}}}]}),
     r"matches\[0\]\.path\.type: must be PathPrefix: filters\[0\] replaces the prefix match"),
    ("path modifier value", _router({"filters": [{"type": "URLRewrite", "urlRewrite": {
        "path": {"type": "ReplaceFullPath"}}}]}),
     r"urlRewrite\.path\.replaceFullPath: is required when type is ReplaceFullPath"),
    ("path modifier other value", _router({"filters": [{"type": "URLRewrite", "urlRewrite": {
        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/a", "replacePrefixMatch": "/"}}}]}),
     r"path\.replacePrefixMatch: must not be set when type is ReplaceFullPath"),
    ("redirect code", _router({"filters": [{"type": "RequestRedirect",
                                            "requestRedirect": {"statusCode": 304}}]}),
     r"requestRedirect\.statusCode: must be one of 301, 302, 303, 307, 308 \(got 304\)"),
    ("redirect scheme", _router({"filters": [{"type": "RequestRedirect",
                                              "requestRedirect": {"scheme": "ftp"}}]}),
     r"requestRedirect\.scheme: must be one of http, https"),
    ("redirect wildcard", _router({"filters": [{"type": "RequestRedirect", "requestRedirect": {
        "hostname": "*.x.test"}}]}), r"requestRedirect\.hostname: must be a host name, not a wildcard"),
    ("backend both", _router({"backends": [{"host": "a", "port": 1, "status": 500}]}),
     r"backends\[0\]\.status: is for a backend with no address"),
    ("backend port", _router({"backends": [{"host": "a"}]}), r"backends\[0\]\.port: is required"),
    ("backend weight", _router({"backends": [{"host": "a", "port": 1, "weight": -1}]}),
     r"backends\[0\]\.weight: must be 0-1000000"),
    ("duration", _router({"timeouts": {"request": "10"}}),
     r"timeouts\.request: must be a duration such as 10s"),
    ("backendRequest longer", _router({"timeouts": {"request": "1s", "backendRequest": "2s"}}),
     r"timeouts\.backendRequest: must not be longer than request \(1s\)"),
    ("hostname port", {"edge": {"urls": ["ws://e/"]}, "httpRouters": [
        {"name": "r", "routes": [{"name": "x", "hostnames": ["a.test:80"]}]}]},
     r"routes\[0\]\.hostnames\[0\]: must be a host name such as example.com"),
    ("route names", {"edge": {"urls": ["ws://e/"]}, "httpRouters": [
        {"name": "r", "routes": [{"name": "x"}, {"name": "x"}]}]},
     r"^httpRouters\[0\]\.routes\[1\]\.name: duplicate route name 'x'"),
    ("router names", {"edge": {"urls": ["ws://e/"]}, "httpRouters": [{"name": "r"}, {"name": "r"}]},
     r"^httpRouters\[1\]\.name: duplicate router name 'r'"),
    ("no certificates", _router(tls={"certificates": []}),
     r"httpRouters\[0\]\.tls\.certificates: needs at least"),
    ("certificate key", _router(tls={"certificates": [{"certFile": "a"}]}),
     r"tls\.certificates\[0\]\.keyFile: is required"),
    ("concurrency", _router(maxConcurrentRequests=0), r"httpRouters\[0\]\.maxConcurrentRequests: must be 1-"),
]


@pytest.mark.parametrize(("cfg", "error"), [(c, e) for _, c, e in BAD], ids=[i for i, _, _ in BAD])
def test_bad_routers_name_the_field(cfg: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_sidecar_config(cfg)


def _routes(*routes: dict[str, Any], routers: tuple[str, ...] = ("web",)) -> dict[str, Any]:
    return {"edge": {"urls": ["ws://e/"]}, "routes": list(routes),
            "httpRouters": [{"name": n} for n in routers]}


@pytest.mark.parametrize(("route", "error"), [
    ({"name": "a", "http": "nope"},
     r"^routes\[0\]\.http: names no httpRouters entry \(got 'nope'; routers: web\)"),
    ({"name": "a", "http": "web", "backend": {"host": "x", "port": 1}},
     r"^routes\[0\]\.backend: must not be set with http"),
    ({"name": "a"},
     r"^routes\[0\]\.backend: is required \(host and port of the Service\), or backends .*, or http"),
    ({"name": "a", "http": "web", "match": {"services": ["udp"]}},
     r"^routes\[0\]\.http: must not be set on a udp route"),
])
def test_route_http_names_a_router(route: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_sidecar_config(_routes(route))


def test_route_with_http_loads() -> None:
    cfg = load_sidecar_config(_routes({"name": "a", "match": {"services": ["http"]}, "http": "web"}))
    assert cfg.routes[0].http == "web" and cfg.to_dict()["routes"][0] == {
        "name": "a", "match": {"services": ["http"]}, "http": "web"}


def test_the_docs_http_router_example_loads() -> None:
    text = (Path(__file__).resolve().parents[3] / "docs" / "sidecar.md").read_text()
    (example,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "httpRouters:" in b]
    cfg = load_sidecar_config("edge: {urls: [ws://e/]}\n" + example)
    (router,) = cfg.http_routers
    assert cfg.routes[0].http == router.name == "web-80"
    assert [b.weight for b in router.routes[0].rules[0].backends] == [3, 1]
