"""A Gateway's listeners: which mproxy can serve, and each one's status conditions (pure).

mproxy serves `TLS` listeners in `Passthrough` mode (the edge routes by SNI, TLS ends at the backend)
and `TCP` listeners (by port). Everything else is refused with the spec's reason, per listener; the
other listeners keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mproxy_operator.gateway_api.names import GROUP, ROUTE_KIND_FOR_PROTOCOL


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    port: int
    protocol: str
    hostname: str | None
    allowed_from: str  # Same | All | Selector
    selector: Mapping[str, Any] | None
    kinds: tuple[str, ...]  # the route kinds it takes (supportedKinds)
    # (type, status, reason, message) of the conditions that are not simply True
    problems: tuple[tuple[str, str, str], ...] = field(default=())  # (condition, reason, message)

    @property
    def valid(self) -> bool:
        return not self.problems


def _kinds(spec: Mapping[str, Any], protocol: str) -> tuple[tuple[str, ...], list[tuple[str, str, str]]]:
    native = ROUTE_KIND_FOR_PROTOCOL.get(protocol)
    wanted = ((spec.get("allowedRoutes") or {}).get("kinds")) or None
    if wanted is None:
        return ((native,) if native else ()), []
    kinds, bad = [], []
    for k in wanted:
        group, kind = k.get("group", GROUP), k.get("kind")
        if group == GROUP and kind == native:
            kinds.append(kind)
        else:
            bad.append(f"{group or 'core'}/{kind}")
    problems = []
    if bad:
        problems.append((
            "ResolvedRefs", "InvalidRouteKinds",
            f"a {protocol} listener takes only {native or 'no'} routes here (not {', '.join(bad)})",
        ))
    return tuple(dict.fromkeys(kinds)), problems


def parse_listeners(gateway: Mapping[str, Any]) -> list[Listener]:
    raw = (gateway.get("spec") or {}).get("listeners") or []
    out = []
    for spec in raw:
        protocol = str(spec.get("protocol") or "")
        problems: list[tuple[str, str, str]] = []
        if protocol not in ROUTE_KIND_FOR_PROTOCOL:
            problems.append((
                "Accepted", "UnsupportedProtocol",
                f"protocol {protocol} is not supported by mproxy yet; use TLS (Passthrough) or TCP",
            ))
        elif protocol == "TLS":
            mode = (spec.get("tls") or {}).get("mode") or "Terminate"
            if mode != "Passthrough":
                problems.append((
                    "Accepted", "UnsupportedValue",
                    f"tls.mode {mode} is not supported: mproxy passes TLS through to the backend "
                    "(set tls.mode: Passthrough)",
                ))
        kinds, kind_problems = _kinds(spec, protocol)
        problems += kind_problems
        if any(c == "Accepted" for c, _r, _m in problems):
            kinds = ()  # a listener mproxy cannot serve takes no route kind at all
        allowed = (spec.get("allowedRoutes") or {}).get("namespaces") or {}
        out.append(Listener(
            name=str(spec.get("name")),
            port=int(spec.get("port") or 0),
            protocol=protocol,
            hostname=(str(spec["hostname"]).lower() if spec.get("hostname") else None),
            allowed_from=str(allowed.get("from") or "Same"),
            selector=allowed.get("selector"),
            kinds=kinds,
            problems=tuple(problems),
        ))
    return _conflicts(out)


def _conflicts(listeners: list[Listener]) -> list[Listener]:
    """Two listeners on one port must share a protocol; TCP ones cannot share a port at all, TLS ones
    only with distinct hostnames (the edge tells them apart by SNI)."""
    out = []
    for lst in listeners:
        others = [o for o in listeners if o is not lst and o.port == lst.port]
        reason = ""
        if any(o.protocol != lst.protocol for o in others):
            reason = "ProtocolConflict"
        elif any(lst.protocol == "TCP" or o.hostname == lst.hostname for o in others):
            reason = "HostnameConflict"
        if reason:
            lst = Listener(**{**_fields(lst), "problems": (
                *lst.problems,
                ("Conflicted", reason, f"another listener of this Gateway uses port {lst.port} ({reason})"),
            )})
        out.append(lst)
    return out


def _fields(lst: Listener) -> dict[str, Any]:
    return {f: getattr(lst, f) for f in Listener.__dataclass_fields__}


def hostname_matches(pattern: str, name: str) -> bool:
    """`name` (itself maybe a wildcard) is covered by `pattern` (exact or `*.` wildcard)."""
    if pattern == name:
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        bare = name[1:] if name.startswith("*.") else name
        return bare.endswith(suffix) and len(bare) > len(suffix)
    return False


def intersect(listener: str | None, route: tuple[str, ...]) -> tuple[str, ...] | None:
    """The hostnames a route serves on a listener: () means any; None means none at all."""
    if listener is None:
        return route
    if not route:
        return (listener,)
    out = []
    for h in route:
        if hostname_matches(listener, h):
            out.append(h)
        elif hostname_matches(h, listener):
            out.append(listener)
    return tuple(dict.fromkeys(out)) or None
