"""TLSRoutes and TCPRoutes against one Gateway: which listeners each attaches to, where its backends are,
and the status the spec asks for (pure: every object comes in as a dict).

A backendRef is a Service (core group) with a port; another namespace's Service needs a ReferenceGrant
there. Of a rule's backendRefs the one with the highest weight is used (the connector dials one backend
per route; weighted splitting is not supported yet and is said so in the route's status).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mproxy_operator.gateway_api.listeners import Listener, intersect
from mproxy_operator.gateway_api.names import GROUP, TLS_ROUTE
from mproxy_operator.model import Selector
from mproxy_operator.selectors import matches

MAX_RULES = 128  # rendered routes per Gateway: the Tunnel's own bound


@dataclass(frozen=True, slots=True)
class Backend:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Binding:
    """One route rule served on one listener."""

    route_kind: str
    route_ns: str
    route_name: str
    rule: int
    listener: Listener
    hostnames: tuple[str, ...]
    backend: Backend


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


def _granted(grants: Sequence[Mapping[str, Any]], kind: str, from_ns: str, service: str) -> bool:
    for g in grants:
        spec = g.get("spec") or {}
        src = any(
            f.get("group") == GROUP and f.get("kind") == kind and f.get("namespace") == from_ns
            for f in spec.get("from") or []
        )
        dst = any(
            t.get("group", "") == "" and t.get("kind") == "Service" and t.get("name", service) == service
            for t in spec.get("to") or []
        )
        if src and dst:
            return True
    return False


def resolve_backend(
    ref: Mapping[str, Any], kind: str, route_ns: str, inp: Inputs
) -> Backend | tuple[str, str]:
    """A Backend, or (reason, message) for ResolvedRefs=False."""
    group, bkind = ref.get("group", ""), ref.get("kind", "Service")
    name = str(ref.get("name"))
    if group != "" or bkind != "Service":
        return "InvalidKind", f"backendRef {group or 'core'}/{bkind} {name}: only Services are supported"
    ns = str(ref.get("namespace") or route_ns)
    if ns != route_ns and not _granted(inp.grants.get(ns) or [], kind, route_ns, name):
        return "RefNotPermitted", (
            f"backendRef Service {ns}/{name}: no ReferenceGrant in {ns} lets {kind}s of {route_ns} "
            "refer to it"
        )
    service = inp.services.get((ns, name))
    port = ref.get("port")
    if service is None:
        return "BackendNotFound", f"backendRef Service {ns}/{name} does not exist"
    ports = [
        p for p in (service.get("spec") or {}).get("ports") or [] if (p.get("protocol") or "TCP") == "TCP"
    ]
    if port is None or not any(p.get("port") == port for p in ports):
        have = ", ".join(str(p.get("port")) for p in ports) or "none"
        return "BackendNotFound", f"backendRef Service {ns}/{name} has no TCP port {port} (its ports: {have})"
    return Backend(f"{name}.{ns}.svc.{inp.cluster_domain}", int(port))


def _rule_backend(
    rule: Mapping[str, Any], kind: str, route_ns: str, inp: Inputs
) -> tuple[Backend | None, list[tuple[str, str]]]:
    refs = sorted(rule.get("backendRefs") or [], key=lambda r: -int(r.get("weight", 1)))
    best, problems = None, []
    for ref in refs:
        got = resolve_backend(ref, kind, route_ns, inp)
        if isinstance(got, Backend):
            if best is None and int(ref.get("weight", 1)) > 0:
                best = got
        else:
            problems.append(got)
    return best, problems


def attach(
    route: Mapping[str, Any], kind: str, inp: Inputs
) -> tuple[list[ParentResult], list[Binding]]:
    """This Gateway's parent results for the route, and the rules it serves on which listeners."""
    meta = route["metadata"]
    route_ns, gw_ns = meta["namespace"], inp.gateway["metadata"]["namespace"]
    spec = route.get("spec") or {}
    route_hosts = tuple(str(h).lower() for h in spec.get("hostnames") or []) if kind == TLS_ROUTE else ()
    rules = spec.get("rules") or []
    resolved = [_rule_backend(r, kind, route_ns, inp) for r in rules]
    problems = [p for _b, ps in resolved for p in ps]
    results, bindings = [], []
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
        why = "NotAllowedByListeners", "no listener of the Gateway allows this route (kind or namespace)"
        for lst in candidates:
            allowed = _allowed(lst, route_ns, gw_ns, inp.namespace_labels)
            if not lst.valid or kind not in lst.kinds or not allowed:
                continue
            hosts = intersect(lst.hostname, route_hosts)
            if hosts is None:
                why = "NoMatchingListenerHostname", "no hostname of the route matches the listener's"
                continue
            res.listeners.append(lst.name)
            for i, (backend, _p) in enumerate(resolved):
                if backend is not None:
                    bindings.append(Binding(kind, route_ns, meta["name"], i, lst, hosts, backend))
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
