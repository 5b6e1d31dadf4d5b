"""Gateway API against the real control plane: the v1.6.3 CRDs, the operator with --gateway-api and the
chart's RBAC for it (gatewayAPI.enabled), and the examples of docs/gateway-api.md applied as written.

The CRDs come from the Go module (tests/k8s/gatewayapi/build.sh, into the cache; never committed).
kwok makes the connector pods Ready, so Programmed is reached without a real edge.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import need
from tests.k8s.test_operator import Operator, _apply, _get, start_operator, stop_operator

from mproxy.ca import CertificateAuthority
from mproxy.config.sidecar import load_sidecar_config
from mproxy_operator.gateway_api.render import HTTP_ROUTERS

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tests" / "k8s" / "gatewayapi" / "build.sh"
DOC = REPO / "docs" / "gateway-api.md"
CONTROLLER = "mproxy.dev/gateway-controller"
GROUP = "gateway.networking.k8s.io"


def _crd_dir() -> Path:
    res = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=300, check=False)
    need(res.returncode == 0, f"the Gateway API CRDs ({BUILD}): {res.stderr.strip()[-300:]}")
    cache = Path(os.environ.get("MPROXY_CACHE", Path.home() / ".cache" / "mproxy"))
    crds = cache / "gateway-api" / "crds" / "standard"
    need(any(crds.glob("*.yaml")), f"no CRDs in {crds}; run {BUILD}")
    return crds


@pytest.fixture(scope="module")
def gwop(kube: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    kube.kubectl("apply", "--server-side", "-f", str(_crd_dir()))
    for crd in ("gatewayclasses", "gateways", "tlsroutes", "tcproutes", "udproutes", "httproutes",
                "referencegrants"):
        kube.kubectl("wait", "--for=condition=Established", f"crd/{crd}.gateway.networking.k8s.io",
                     "--timeout=30s")
    op = start_operator(kube, tmp_path_factory.mktemp("gwop"), "--gateway-api",
                        values=("gatewayAPI.enabled=true",))
    try:
        yield op
        op.alive()
        # Every watch the Gateway API needs is allowed by the chart's RBAC (a refused one only logs). An
        # RBAC refusal says who "cannot" do what; other 403s (a write into a namespace being deleted
        # as a test ends) are the apiserver's admission, not RBAC.
        forbidden = [ln for ln in op.log.read_text(errors="replace").splitlines()
                     if "Forbidden" in ln and " cannot " in ln]
        assert not forbidden, forbidden[:3]
    finally:
        stop_operator(op)


def _examples() -> dict[str, list[dict[str, Any]]]:
    text = DOC.read_text()
    out = {}
    for m in re.finditer(r"<!-- example: (\w+) -->\n```yaml\n(.*?)```", text, re.S):
        out[m.group(1)] = [d for d in yaml.safe_load_all(m.group(2)) if d]
    return out


def _status(kube: Any, kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
    args = ["get", kind, name, "-o", "json"] + (["-n", ns] if ns else [])
    res = kube.kubectl(*args, check=False)
    return (json.loads(res.stdout).get("status") or {}) if res.returncode == 0 else {}


def _cond(conds: list[dict[str, Any]], type_: str) -> dict[str, Any]:
    return next((c for c in conds if c["type"] == type_), {})


def _listener(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next((x for x in st.get("listeners") or [] if x["name"] == name), {})


def _parent(st: dict[str, Any]) -> dict[str, Any]:
    return next((p for p in st.get("parents") or [] if p["controllerName"] == CONTROLLER), {})


def _class(kube: Any, op: Operator, name: str, **params: str) -> None:
    docs = _examples()["gatewayclass"]
    cm, gc = json.loads(json.dumps(docs[0])), json.loads(json.dumps(docs[1]))
    cm["metadata"] = {"name": f"{name}-params", "namespace": op.namespace}
    cm["data"].update(params)
    gc["metadata"] = {"name": name}
    gc["spec"]["parametersRef"].update(name=f"{name}-params", namespace=op.namespace)
    _apply(kube, cm, gc)


def _config(kube: Any, ns: str, gateway: str) -> Any:
    cm = _get(kube, "configmap", f"mproxy-gateway-{gateway}", ns)
    assert cm is not None
    return load_sidecar_config(yaml.safe_load(cm["data"]["config.yaml"]))


def test_doc_examples_tls_and_tcp_gateways(kube: Any, gwop: Operator, kube_namespace: str) -> None:
    ns, cls = kube_namespace, f"mproxy-{uuid.uuid4().hex[:6]}"
    _class(kube, gwop, cls)
    st = kube.wait_for(
        lambda: (s := _status(kube, "gatewayclass", cls)) and _cond(s["conditions"], "Accepted")
        .get("status") == "True" and s,
        timeout=30, what="the GatewayClass Accepted",
    )
    assert {f["name"] for f in st["supportedFeatures"]} >= {"Gateway", "TLSRoute", "TCPRoute"}

    ex = _examples()
    web = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "web"}, "ports": [{"name": "https", "port": 443}]}}
    pg = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "postgres"},
          "spec": {"selector": {"app": "pg"}, "ports": [{"port": 5432}]}}
    docs = [web, pg, *ex["tlsroute"], *ex["tcproute"]]
    for d in docs:
        if d["kind"] == "Gateway":
            d["spec"]["gatewayClassName"] = cls
    _apply(kube, *docs, namespace=ns)

    def programmed(name: str) -> dict[str, Any] | None:
        s = _status(kube, "gateway", name, ns)
        return s if _cond(s.get("conditions") or [], "Programmed").get("status") == "True" else None

    shop = kube.wait_for(lambda: programmed("shop"), timeout=60, what="Gateway shop Programmed")
    assert shop["addresses"] == [{"type": "IPAddress", "value": "203.0.113.7"}]
    assert _cond(shop["conditions"], "Accepted")["status"] == "True"
    tls = _listener(shop, "tls")
    assert tls["attachedRoutes"] == 1 and tls["supportedKinds"][0]["kind"] == "TLSRoute"
    assert _cond(tls["conditions"], "Conflicted")["status"] == "False"
    route = _status(kube, "tlsroute", "web", ns)
    assert _cond(_parent(route)["conditions"], "Accepted")["status"] == "True"
    assert _cond(_parent(route)["conditions"], "ResolvedRefs")["status"] == "True"
    (r,) = _config(kube, ns, "shop").routes
    assert r.match.services == ("https",) and r.match.ports == (443,)
    assert r.match.hostnames == ("www.shop.example.com",)
    (b,) = r.targets
    assert (b.host, b.port, b.weight) == (f"web.{ns}.svc.cluster.local", 443, 1)
    dep = _get(kube, "deployment", "mproxy-gateway-shop", ns)
    assert dep is not None and dep["metadata"]["ownerReferences"][0]["kind"] == "Gateway"

    db = kube.wait_for(lambda: programmed("db"), timeout=60, what="Gateway db Programmed")
    assert _listener(db, "postgres")["attachedRoutes"] == 1
    (r,) = _config(kube, ns, "db").routes
    assert r.match.services == ("tcp",) and r.match.ports == (5432,) and not r.match.hostnames
    assert [(b.host, b.port) for b in r.targets] == [(f"postgres.{ns}.svc.cluster.local", 5432)]

    kube.kubectl("delete", "gateway", "shop", "-n", ns, "--timeout=60s")
    kube.wait_for(lambda: _get(kube, "deployment", "mproxy-gateway-shop", ns) is None, timeout=60,
                  what="the connector garbage-collected with its Gateway")
    kube.wait_for(lambda: not _parent(_status(kube, "tlsroute", "web", ns)), timeout=30,
                  what="the TLSRoute's status entry for the deleted Gateway removed")


def test_doc_example_udp_gateway(kube: Any, gwop: Operator, kube_namespace: str) -> None:
    """docs/gateway-api.md's UDPRoute: a `udp` route on the listener's port to the Service's UDP port;
    the same Service with only a TCP port 53 is BackendNotFound for the UDPRoute."""
    ns, cls = kube_namespace, f"mproxy-{uuid.uuid4().hex[:6]}"
    _class(kube, gwop, cls)
    st = kube.wait_for(
        lambda: (s := _status(kube, "gatewayclass", cls)) and s.get("supportedFeatures") and s,
        timeout=30, what="the GatewayClass's supportedFeatures",
    )
    assert "UDPRoute" in {f["name"] for f in st["supportedFeatures"]}
    coredns: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "coredns"},
        "spec": {"selector": {"app": "dns"}, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]},
    }
    docs = [coredns, *_examples()["udproute"]]
    for d in docs:
        if d["kind"] == "Gateway":
            d["spec"]["gatewayClassName"] = cls
    _apply(kube, *docs, namespace=ns)

    def programmed() -> dict[str, Any] | None:
        s = _status(kube, "gateway", "dns", ns)
        return s if _cond(s.get("conditions") or [], "Programmed").get("status") == "True" else None

    gw = kube.wait_for(programmed, timeout=60, what="Gateway dns Programmed")
    lst = _listener(gw, "dns")
    assert lst["attachedRoutes"] == 1 and [k["kind"] for k in lst["supportedKinds"]] == ["UDPRoute"]
    conds = _parent(_status(kube, "udproute", "dns", ns))["conditions"]
    assert _cond(conds, "Accepted")["status"] == "True" and _cond(conds, "ResolvedRefs")["status"] == "True"
    (r,) = _config(kube, ns, "dns").routes
    assert r.match.services == ("udp",) and r.match.ports == (53,) and not r.match.hostnames
    assert [(b.host, b.port) for b in r.targets] == [(f"coredns.{ns}.svc.cluster.local", 53)]

    coredns["spec"]["ports"] = [{"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
    _apply(kube, coredns, namespace=ns)
    conds = kube.wait_for(
        lambda: (c := _parent(_status(kube, "udproute", "dns", ns)).get("conditions") or [])
        and _cond(c, "ResolvedRefs").get("reason") == "BackendNotFound" and c,
        timeout=30, what="the UDPRoute's ResolvedRefs False once the Service has no UDP port 53",
    )
    assert _cond(conds, "ResolvedRefs")["status"] == "False"
    assert "no UDP port 53" in _cond(conds, "ResolvedRefs")["message"]


def test_refusals_and_reference_grants(kube: Any, gwop: Operator, kube_namespace: str) -> None:
    """Each refusal carries the spec's reason; a cross-namespace backend works once a ReferenceGrant
    allows it; a class with bad parameters is not Accepted, and neither are its Gateways."""
    ns, cls = kube_namespace, f"mproxy-{uuid.uuid4().hex[:6]}"
    other = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", other)
    try:
        _class(kube, gwop, cls)
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
               "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]}}
        _apply(kube, svc, namespace=other)
        gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "g"},
              "spec": {"gatewayClassName": cls, "listeners": [
                  {"name": "tcp", "protocol": "TCP", "port": 5432},
                  {"name": "http", "protocol": "HTTP", "port": 80},
                  {"name": "term", "protocol": "TLS", "port": 8443, "hostname": "a.example.test",
                   "tls": {"mode": "Terminate", "certificateRefs": [{"name": "x"}]}},
              ]}}
        cross = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TCPRoute", "metadata": {"name": "x"},
                 "spec": {"parentRefs": [{"name": "g", "sectionName": "tcp"}],
                          "rules": [{"backendRefs": [{"name": "db", "namespace": other, "port": 5432}]}]}}
        stray = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TCPRoute",
                 "metadata": {"name": "stray"},
                 "spec": {"parentRefs": [{"name": "g", "sectionName": "nope"}],
                          "rules": [{"backendRefs": [{"name": "missing", "port": 1}]}]}}
        _apply(kube, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "edge-token"},
                      "stringData": {"token": "x.y.z"}}, gw, cross, stray, namespace=ns)

        def parent(name: str, type_: str, reason: str) -> bool:
            c = _cond(_parent(_status(kube, "tcproute", name, ns)).get("conditions") or [], type_)
            return bool(c.get("reason") == reason)

        def refused_config() -> bool:
            tcp = [x for x in _config(kube, ns, "g").routes if x.match.services == ("tcp",)]
            return len(tcp) == 1 and [(b.weight, b.refuse) for b in tcp[0].targets] == [(1, True)]

        # One reconcile writes the routes' statuses one by one, then the ConfigMap, then the Gateway's
        # status: wait for all of them, not the first.
        kube.wait_for(lambda: parent("x", "ResolvedRefs", "RefNotPermitted")
                      and parent("stray", "Accepted", "NoMatchingParent")
                      and parent("stray", "ResolvedRefs", "BackendNotFound")
                      and _cond(_status(kube, "gateway", "g", ns).get("conditions") or [], "Accepted")
                      .get("reason") == "ListenersNotValid"
                      and refused_config(), timeout=45,
                      what="RefNotPermitted without a ReferenceGrant, the stray route refused, the Gateway's "
                      "status and the refused share in the config")
        st = _status(kube, "gateway", "g", ns)
        # Accepted with some invalid listeners (the spec allows True here); the valid one is served.
        assert _cond(st["conditions"], "Accepted")["reason"] == "ListenersNotValid"
        assert _cond(st["conditions"], "Accepted")["status"] == "True"
        assert _cond(_listener(st, "http")["conditions"], "Accepted")["status"] == "True"
        assert _listener(st, "http")["supportedKinds"] == [{"group": GROUP, "kind": "HTTPRoute"}]
        assert _cond(_listener(st, "term")["conditions"], "Accepted")["reason"] == "UnsupportedValue"
        assert _cond(_listener(st, "tcp")["conditions"], "Accepted")["status"] == "True"
        # The refused backendRef keeps its share, refused: the listener's streams are closed.
        (r,) = [x for x in _config(kube, ns, "g").routes if x.match.services == ("tcp",)]
        assert [(b.weight, b.refuse) for b in r.targets] == [(1, True)]

        grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                 "metadata": {"name": "tcproutes"},
                 "spec": {"from": [{"group": GROUP, "kind": "TCPRoute", "namespace": ns}],
                          "to": [{"group": "", "kind": "Service"}]}}
        _apply(kube, grant, namespace=other)
        def granted_config() -> bool:
            tcp = [x for x in _config(kube, ns, "g").routes if x.match.services == ("tcp",)]
            return len(tcp) == 1 and [b.host for b in tcp[0].targets] == [f"db.{other}.svc.cluster.local"]

        kube.wait_for(lambda: parent("x", "ResolvedRefs", "ResolvedRefs") and granted_config()
                      and _listener(_status(kube, "gateway", "g", ns), "tcp").get("attachedRoutes") == 1,
                      timeout=45, what="ResolvedRefs once the ReferenceGrant exists, its backend rendered")

        _class(kube, gwop, cls, edgeURLs="https://not-a-tunnel")
        kube.wait_for(
            lambda: _cond(_status(kube, "gatewayclass", cls)["conditions"], "Accepted").get("reason")
            == "InvalidParameters"
            and _cond(_status(kube, "gateway", "g", ns)["conditions"], "Accepted").get("reason")
            == "InvalidParameters",
            timeout=45, what="InvalidParameters on the class and its Gateway",
        )
        assert "edgeURLs" in _cond(_status(kube, "gatewayclass", cls)["conditions"], "Accepted")["message"]
    finally:
        kube.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_doc_example_http_and_https_with_an_httproute(
    kube: Any, gwop: Operator, kube_namespace: str
) -> None:
    """The HTTPRoute example as written: both listeners accepted with the route attached, the HTTPS
    listener's certificate resolved and copied into the Gateway's certs Secret that its connector
    mounts; a certificateRef to another namespace is RefNotPermitted until a ReferenceGrant allows it."""
    ns, cls = kube_namespace, f"mproxy-{uuid.uuid4().hex[:6]}"
    other = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", other)
    try:
        _class(kube, gwop, cls)
        leaf = CertificateAuthority.create().issue(["*.shop.example.com"])
        crt, key = leaf.cert_pem.decode(), leaf.key_pem.decode()

        def tls_secret(name: str) -> dict[str, Any]:
            return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                    "type": "kubernetes.io/tls", "stringData": {"tls.crt": crt, "tls.key": key}}

        svcs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": n},
                 "spec": {"selector": {"app": n}, "ports": [{"port": 8080}]}}
                for n in ("api", "api-canary", "store")]
        docs = _examples()["httproute"]
        for d in docs:
            if d["kind"] == "Gateway":
                d["spec"]["gatewayClassName"] = cls
        _apply(kube, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "edge-token"},
                      "stringData": {"token": "x.y.z"}}, tls_secret("shop-cert"), *svcs, *docs, namespace=ns)

        def attached() -> dict[str, Any] | None:
            st = _status(kube, "gateway", "storefront", ns)
            ok = all(_listener(st, n).get("attachedRoutes") == 1 for n in ("http", "https"))
            return st if ok else None

        st = kube.wait_for(attached, timeout=60, what="the HTTPRoute attached to both listeners")
        assert _cond(st["conditions"], "Accepted")["reason"] == "Accepted"
        https = _listener(st, "https")
        assert _cond(https["conditions"], "ResolvedRefs")["status"] == "True"
        assert https["supportedKinds"] == [{"group": GROUP, "kind": "HTTPRoute"}]
        parent = _parent(_status(kube, "httproute", "store", ns))
        assert _cond(parent["conditions"], "Accepted")["status"] == "True"
        assert _cond(parent["conditions"], "ResolvedRefs")["status"] == "True"

        certs = kube.wait_for(lambda: _get(kube, "secret", "mproxy-gateway-storefront-certs", ns), timeout=30,
                              what="the Gateway's certs Secret")
        assert certs["metadata"]["ownerReferences"][0]["kind"] == "Gateway"
        assert sorted(certs["data"]) == [f"{ns}.shop-cert.crt", f"{ns}.shop-cert.key"]
        dep = _get(kube, "deployment", "mproxy-gateway-storefront", ns)
        assert dep is not None
        pod = dep["spec"]["template"]["spec"]
        assert {"name": "mproxy-certs", "secret": {"secretName": "mproxy-gateway-storefront-certs",
                                                   "defaultMode": 420}} in pod["volumes"]
        assert any(m["mountPath"] == "/var/run/mproxy/certs" and m.get("readOnly")
                   for m in pod["containers"][0]["volumeMounts"])

        cm = _get(kube, "configmap", "mproxy-gateway-storefront", ns)
        assert cm is not None
        raw = yaml.safe_load(cm["data"]["config.yaml"])
        if HTTP_ROUTERS:  # the connector has its HTTP router: the rendered routers, through its schema
            load_sidecar_config(raw)
            routers = {r["name"]: r for r in raw["httpRouters"]}
            (route,) = routers["https"]["routes"]
            assert route["hostnames"] == ["www.shop.example.com"]
            assert [b["weight"] for b in route["rules"][0]["backends"]] == [9, 1]
            assert routers["https"]["tls"]["certificates"] == [
                {"certFile": f"/var/run/mproxy/certs/{ns}.shop-cert.crt",
                 "keyFile": f"/var/run/mproxy/certs/{ns}.shop-cert.key"}]
            assert _cond(https["conditions"], "Programmed")["status"] == "True"
        else:
            assert "httpRouters" not in raw
            assert _cond(https["conditions"], "Programmed")["reason"] == "Pending"

        # The certificate moved to another namespace: refused until a ReferenceGrant allows it.
        _apply(kube, tls_secret("shared-cert"), namespace=other)
        gw = next(d for d in docs if d["kind"] == "Gateway")
        gw["spec"]["listeners"][1]["tls"]["certificateRefs"] = [
            {"kind": "Secret", "name": "shared-cert", "namespace": other}]
        _apply(kube, gw, namespace=ns)

        def https_reason() -> str:
            lst = _listener(_status(kube, "gateway", "storefront", ns), "https")
            return str(_cond(lst.get("conditions") or [], "ResolvedRefs").get("reason"))

        kube.wait_for(lambda: https_reason() == "RefNotPermitted", timeout=45, what="RefNotPermitted")
        assert _listener(_status(kube, "gateway", "storefront", ns), "https")["attachedRoutes"] == 1
        grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                 "metadata": {"name": "certs"},
                 "spec": {"from": [{"group": GROUP, "kind": "Gateway", "namespace": ns}],
                          "to": [{"group": "", "kind": "Secret", "name": "shared-cert"}]}}
        _apply(kube, grant, namespace=other)
        kube.wait_for(lambda: https_reason() == "ResolvedRefs", timeout=45,
                      what="ResolvedRefs with the grant")

        def cert_keys() -> list[str]:
            secret = _get(kube, "secret", "mproxy-gateway-storefront-certs", ns) or {}
            return sorted(secret.get("data") or {})

        kube.wait_for(lambda: cert_keys() == [f"{other}.shared-cert.crt", f"{other}.shared-cert.key"],
                      timeout=30, what="the certs Secret follows the certificateRef")
    finally:
        kube.kubectl("delete", "namespace", other, "--wait=false", check=False)
