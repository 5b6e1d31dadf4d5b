"""TLSRoutes, TCPRoutes, UDPRoutes and HTTPRoutes against one Gateway: which listeners each attaches to,
where its backends are, and the status the spec asks for (pure: every object comes in as a dict).

A backendRef is a Service (core group) with a port (a UDP port for a UDPRoute, a TCP one otherwise);
another namespace's Service needs a ReferenceGrant there. Every backendRef of a rule is kept with its
weight; one that does not resolve keeps its share of the traffic, refused (TLS, TCP; a UDP client's
datagrams are dropped) or answered 500 (HTTP), as the spec asks.

An HTTPRoute is served whole on each listener it attaches to: its rules become one entry of that
listener's HTTP router (the connector's L7 config), in the spec's shapes (matches, filters, weighted
backends, timeouts). A filter mproxy does not implement makes the route not Accepted (UnsupportedValue).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mproxy_operator.gateway_api.grants import granted
from mproxy_operator.gateway_api.listeners import Listener, intersect
from mproxy_operator.gateway_api.names import GROUP, HTTP_ROUTE, PORT_ROUTES, UDP_ROUTE
from mproxy_operator.model import Selector
from mproxy_operator.selectors import matches

MAX_RULES = 128  # rendered routes per Gateway: the Tunnel's own bound

# HTTPRoute filter types the connector implements, and the field holding each one's settings.
HTTP_FILTERS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
}


@dataclass(frozen=True, slots=True)
class Backend:
    """A resolved backendRef; host None is one that did not resolve (its share is refused)."""

    host: str | None
    port: int | None
    weight: int = 1

    @property
    def valid(self) -> bool:
        return self.host is not None


@dataclass(frozen=True, slots=True)
class Binding:
    """One TLSRoute/TCPRoute/UDPRoute rule served on one listener."""

    route_kind: str
    route_ns: str
    route_name: str
    rule: int
    listener: Listener
    hostnames: tuple[str, ...]
    backends: tuple[Backend, ...]

    @property
    def backend(self) -> Backend | None:
        """The heaviest valid backend (for a data plane without weighted backends)."""
        valid = [b for b in self.backends if b.valid and b.weight > 0]
        return max(valid, key=lambda b: b.weight) if valid else None


@dataclass(frozen=True, slots=True)
class HttpBinding:
    """One HTTPRoute served on one listener: an entry of that listener's HTTP router."""

    route_ns: str
    route_name: str
    listener: Listener
    hostnames: tuple[str, ...]
    rules: tuple[Mapping[str, Any], ...]  # the router contract's rules[] (docs/sidecar.md httpRouters)


@dataclass
class ParentResult:
    """This controller's entry in the route's status.parents for one parentRef."""

    ref: Mapping[str, Any]
    accepted: tuple[bool, str, str] = (True, "Accepted", "the route is attached")
    resolved: tuple[bool, str, str] = (True, "ResolvedRefs", "every backendRef resolved")
    listeners: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Inputs:
    gateway: Mapping[str, Any]
    listeners: Sequence[Listener]
    services: Mapping[tuple[str, str], Mapping[str, Any]]  # (namespace, name) -> Service
    grants: Mapping[str, Sequence[Mapping[str, Any]]]  # namespace -> its ReferenceGrants
    namespace_labels: Mapping[str, Mapping[str, str]]
    cluster_domain: str = "cluster.local"


def age(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """The spec's order of precedence between conflicting routes: oldest first, then namespace/name."""
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), str(meta.get("namespace")), str(meta.get("name")))


def refs_gateway(ref: Mapping[str, Any], route_ns: str, gateway: Mapping[str, Any]) -> bool:
    meta = gateway["metadata"]
    return bool(
        ref.get("group", GROUP) == GROUP
        and ref.get("kind", "Gateway") == "Gateway"
        and ref.get("name") == meta["name"]
        and ref.get("namespace", route_ns) == meta["namespace"]
    )


def _allowed(listener: Listener, route_ns: str, gw_ns: str, labels: Mapping[str, Mapping[str, str]]) -> bool:
    if listener.allowed_from == "All":
        return True
    if listener.allowed_from == "Selector":
        sel = listener.selector or {}
        selector = Selector(dict(sel.get("matchLabels") or {}), tuple(sel.get("matchExpressions") or ()))
        return matches(selector, labels.get(route_ns) or {})
    return route_ns == gw_ns


def resolve_backend(
    ref: Mapping[str, Any], kind: str, route_ns: str, inp: Inputs
) -> Backend | tuple[str, str]:
    """A Backend, or (reason, message) for ResolvedRefs=False."""
    group, bkind = ref.get("group", ""), ref.get("kind", "Service")
    name = str(ref.get("name"))
    if group != "" or bkind != "Service":
        return "InvalidKind", f"backendRef {group or 'core'}/{bkind} {name}: only Services are supported"
    ns = str(ref.get("namespace") or route_ns)
    if ns != route_ns and not granted(inp.grants.get(ns) or [], kind, route_ns, "Service", name):
        return "RefNotPermitted", (
            f"backendRef Service {ns}/{name}: no ReferenceGrant in {ns} lets {kind}s of {route_ns} "
            "refer to it"
        )
    service = inp.services.get((ns, name))
    port = ref.get("port")
    if service is None:
        return "BackendNotFound", f"backendRef Service {ns}/{name} does not exist"
    proto = "UDP" if kind == UDP_ROUTE else "TCP"
    ports = [
        p for p in (service.get("spec") or {}).get("ports") or [] if (p.get("protocol") or "TCP") == proto
    ]
    if port is None or not any(p.get("port") == port for p in ports):
        have = ", ".join(str(p.get("port")) for p in ports) or "none"
        return "BackendNotFound", (
            f"backendRef Service {ns}/{name} has no {proto} port {port} (its {proto} ports: {have})"
        )
    if (service.get("spec") or {}).get("clusterIP") == "None":
        # A headless Service's name resolves to its endpoints' addresses, which listen on the target
        # port: no cluster IP translates the Service port.
        target = next(p for p in ports if p.get("port") == port).get("targetPort", port)
        if not isinstance(target, int):
            return "BackendNotFound", (
                f"backendRef Service {ns}/{name} is headless and its port {port} has the named targetPort "
                f"{target!r}, which mproxy cannot resolve: use a numeric targetPort or a Service with a "
                "cluster IP")
        port = target
    return Backend(f"{name}.{ns}.svc.{inp.cluster_domain}", int(port), _weight(ref))


def _weight(ref: Mapping[str, Any]) -> int:
    return int(ref.get("weight", 1))


def _rule_backends(
    rule: Mapping[str, Any], kind: str, route_ns: str, inp: Inputs
) -> tuple[tuple[Backend, ...], list[tuple[str, str]]]:
    """Every backendRef of a rule in order, weighted (an unresolved one is Backend(None, None, w))."""
    out, problems = [], []
    for ref in rule.get("backendRefs") or []:
        got = resolve_backend(ref, kind, route_ns, inp)
        if isinstance(got, Backend):
            out.append(got)
        else:
            out.append(Backend(None, None, _weight(ref)))
            problems.append(got)
    return tuple(out), problems


def _regex_problem(kind: str, value: Any) -> str | None:
    try:
        re.compile(str(value))
    except re.error as exc:
        return f"{kind} RegularExpression {str(value)[:100]!r} does not compile: {exc}"
    return None


def _http_matches(rule: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    out, unsupported = [], []
    for m in rule.get("matches") or []:
        one: dict[str, Any] = {}
        path = m.get("path")
        if path:
            one["path"] = {"type": path.get("type", "PathPrefix"), "value": path.get("value", "/")}
            if one["path"]["type"] == "RegularExpression":
                unsupported.append(_regex_problem("path", one["path"]["value"]) or "")
        for key in ("headers", "queryParams"):
            items = [{"type": h.get("type", "Exact"), "name": h.get("name"), "value": h.get("value")}
                     for h in m.get(key) or []]
            for h in items:
                if h["type"] == "RegularExpression":
                    unsupported.append(_regex_problem(key, h["value"]) or "")
            if items:
                one[key] = items
        if m.get("method"):
            one["method"] = m["method"]
        out.append(one)
    return out, [u for u in unsupported if u]


def _http_filters(filters: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    out, unsupported = [], []
    for f in filters:
        type_ = str(f.get("type"))
        key = HTTP_FILTERS.get(type_)
        if key is None:
            unsupported.append(f"filter {type_} is not supported by mproxy "
                               f"(supported: {', '.join(HTTP_FILTERS)})")
            continue
        out.append({"type": type_, key: dict(f.get(key) or {})})
    return out, unsupported


def http_rule(
    rule: Mapping[str, Any], route_ns: str, inp: Inputs
) -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
    """One HTTPRoute rule as the router contract's rule: (rule, ResolvedRefs problems, unsupported)."""
    matches_, unsupported = _http_matches(rule)
    filters, bad = _http_filters(rule.get("filters") or [])
    unsupported += bad
    backends: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    for ref in rule.get("backendRefs") or []:
        if ref.get("filters"):
            unsupported.append("filters on a backendRef are not supported by mproxy (put them on the rule)")
        got = resolve_backend(ref, HTTP_ROUTE, route_ns, inp)
        if isinstance(got, Backend):
            backends.append({"host": got.host, "port": got.port, "weight": got.weight})
        else:
            backends.append({"weight": _weight(ref), "status": 500})
            problems.append(got)
    out: dict[str, Any] = {"matches": matches_, "filters": filters, "backends": backends}
    timeouts = {k: v for k, v in (rule.get("timeouts") or {}).items() if k in ("request", "backendRequest")}
    if timeouts:
        out["timeouts"] = timeouts
    return out, problems, unsupported


def attach(
    route: Mapping[str, Any], kind: str, inp: Inputs
) -> tuple[list[ParentResult], list[Binding | HttpBinding]]:
    """This Gateway's parent results for the route, and what it serves on which listeners (a Binding
    per TLSRoute/TCPRoute/UDPRoute rule, an HttpBinding per HTTPRoute). A listener that is accepted but not
    served (an HTTPS one without a usable certificate) counts the route as attached, serves nothing."""
    meta = route["metadata"]
    route_ns, gw_ns = meta["namespace"], inp.gateway["metadata"]["namespace"]
    spec = route.get("spec") or {}
    route_hosts = () if kind in PORT_ROUTES else tuple(str(h).lower() for h in spec.get("hostnames") or [])
    rules = spec.get("rules") or []
    unsupported: list[str] = []
    if kind == HTTP_ROUTE:
        http_rules = [http_rule(r, route_ns, inp) for r in rules]
        problems = [p for _r, ps, _u in http_rules for p in ps]
        unsupported = [u for _r, _p, us in http_rules for u in us]
        stream_rules: list[tuple[tuple[Backend, ...], list[tuple[str, str]]]] = []
    else:
        stream_rules = [_rule_backends(r, kind, route_ns, inp) for r in rules]
        problems = [p for _b, ps in stream_rules for p in ps]
    results: list[ParentResult] = []
    bindings: list[Binding | HttpBinding] = []
    for ref in spec.get("parentRefs") or []:
        if not refs_gateway(ref, route_ns, inp.gateway):
            continue
        res = ParentResult(ref)
        if problems:
            res.resolved = (False, problems[0][0], "; ".join(m for _r, m in problems)[:1024])
        candidates = [
            lst for lst in inp.listeners
            if ref.get("sectionName") in (None, lst.name) and ref.get("port") in (None, lst.port)
        ]
        if not candidates:
            res.accepted = (False, "NoMatchingParent", "no listener of the Gateway has that sectionName/port")
            results.append(res)
            continue
        if unsupported:
            res.accepted = (False, "UnsupportedValue", "; ".join(dict.fromkeys(unsupported))[:1024])
            results.append(res)
            continue
        why = "NotAllowedByListeners", "no listener of the Gateway allows this route (kind or namespace)"
        for lst in candidates:
            allowed = _allowed(lst, route_ns, gw_ns, inp.namespace_labels)
            if not lst.accepted or kind not in lst.kinds or not allowed:
                continue
            hosts = intersect(lst.hostname, route_hosts)
            if hosts is None:
                why = "NoMatchingListenerHostname", "no hostname of the route matches the listener's"
                continue
            res.listeners.append(lst.name)
            if not lst.served:
                continue
            if kind == HTTP_ROUTE:
                bindings.append(HttpBinding(route_ns, meta["name"], lst, hosts,
                                            tuple(r for r, _p, _u in http_rules)))
                continue
            for i, (backends, _p) in enumerate(stream_rules):
                if backends:
                    bindings.append(Binding(kind, route_ns, meta["name"], i, lst, hosts, backends))
        if not res.listeners:
            res.accepted = (False, *why)
        results.append(res)
    return results, bindings


def parent_status(
    res: ParentResult, generation: int, previous: Iterable[Mapping[str, Any]], now: str, controller: str
) -> dict[str, Any]:
    from mproxy_operator.gateway_api.status import condition

    prev = list(previous)
    return {
        "parentRef": dict(res.ref),
        "controllerName": controller,
        "conditions": [
            condition("Accepted", *res.accepted, generation, prev, now),
            condition("ResolvedRefs", *res.resolved, generation, prev, now),
        ],
    }
