"""A Gateway's listeners: which mproxy can serve, and each one's status conditions (pure).

mproxy serves `TLS` listeners in `Passthrough` mode (the edge routes by SNI, TLS ends at the backend),
`TCP` and `UDP` listeners (by port), `HTTP` listeners (the edge routes by Host, the connector's HTTP router
matches HTTPRoutes) and `HTTPS` listeners (`tls.mode: Terminate`: the edge passes TLS through by SNI
and the connector terminates it with the listener's certificateRefs, then routes like HTTP).
Everything else is refused with the spec's reason, per listener; the other listeners keep working.

A listener has three states the status tells apart:
- not accepted (unsupported protocol or value, conflicted): routes cannot attach, nothing is served;
- accepted with unresolved references (a bad certificateRef, an unknown route kind): routes attach and
  are counted (attachedRoutes), ResolvedRefs is False; an HTTPS listener with no usable certificate is
  not served (Programmed False);
- served: Programmed True.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mproxy_operator.gateway_api.grants import granted
from mproxy_operator.gateway_api.names import GROUP, PORT_PROTOCOLS, ROUTE_KIND_FOR_PROTOCOL

TLS_SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105 (a Secret type)


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    port: int
    protocol: str
    hostname: str | None
    allowed_from: str  # Same | All | Selector
    selector: Mapping[str, Any] | None
    kinds: tuple[str, ...]  # the route kinds it takes (supportedKinds)
    problems: tuple[tuple[str, str, str], ...] = field(default=())  # (condition, reason, message)
    # HTTPS: the certificateRefs that resolved to a usable kubernetes.io/tls Secret, (namespace, name)
    certificates: tuple[tuple[str, str], ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def accepted(self) -> bool:
        """Routes may attach (and are counted): the listener is Accepted and not Conflicted."""
        return not any(c in ("Accepted", "Conflicted") for c, _r, _m in self.problems)

    @property
    def served(self) -> bool:
        """The connector serves it (Programmed): accepted, takes some route kind, and an HTTPS listener
        has at least one usable certificate."""
        if not self.accepted or not self.kinds:
            return False
        return self.protocol != "HTTPS" or bool(self.certificates)


@dataclass(frozen=True, slots=True)
class CertInputs:
    """What certificateRefs resolve against: Secrets by (namespace, name) (absent: not found), and the
    ReferenceGrants of each namespace a ref points into."""

    secrets: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    grants: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)


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


def tls_secret_problem(secret: Mapping[str, Any]) -> str | None:
    """Why a Secret cannot serve as a listener certificate, or None. Never quotes the contents."""
    import base64
    import binascii

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if secret.get("type") != TLS_SECRET_TYPE:
        return f"is of type {secret.get('type') or 'Opaque'}, not {TLS_SECRET_TYPE}"
    data = secret.get("data") or {}
    try:
        crt, key = (base64.b64decode(data.get(k) or "", validate=True) for k in ("tls.crt", "tls.key"))
    except (binascii.Error, ValueError):
        return "has tls.crt or tls.key that is not base64"
    if not crt or not key:
        return "has no tls.crt or no tls.key"
    try:
        certs = x509.load_pem_x509_certificates(crt)
    except ValueError:
        return "has a tls.crt that is not a PEM certificate"
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        return "has a tls.key that is not an unencrypted PEM private key"
    except Exception:  # an unsupported key type (cryptography raises UnsupportedAlgorithm)
        return "has a tls.key of an unsupported key type"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if certs[0].public_key().public_bytes(enc, public) != private.public_key().public_bytes(enc, public):
        return "has a tls.key that does not match the first certificate of tls.crt"
    return None


def _certificates(
    spec: Mapping[str, Any], gw_ns: str, inp: CertInputs
) -> tuple[tuple[tuple[str, str], ...], list[tuple[str, str, str]]]:
    """The usable certificateRefs of an HTTPS listener, and the ResolvedRefs problem (the first one)."""
    refs = (spec.get("tls") or {}).get("certificateRefs") or []
    ok: list[tuple[str, str]] = []
    denied: list[str] = []
    invalid: list[str] = []
    for ref in refs:
        group, kind, name = ref.get("group", ""), ref.get("kind", "Secret"), str(ref.get("name"))
        ns = str(ref.get("namespace") or gw_ns)
        where = f"certificateRef {group or 'core'}/{kind} {ns}/{name}"
        if group != "" or kind != "Secret":
            invalid.append(f"{where}: only core Secrets of type {TLS_SECRET_TYPE} are supported")
            continue
        if ns != gw_ns and not granted(inp.grants.get(ns) or [], "Gateway", gw_ns, "Secret", name):
            denied.append(f"{where}: no ReferenceGrant in {ns} lets Gateways of {gw_ns} refer to it")
            continue
        secret = inp.secrets.get((ns, name))
        if secret is None:
            invalid.append(f"{where} does not exist")
            continue
        problem = tls_secret_problem(secret)
        if problem is not None:
            invalid.append(f"{where} {problem}")
            continue
        ok.append((ns, name))
    problems = []
    if not refs:
        invalid.append("an HTTPS listener needs tls.certificateRefs (a Secret of type kubernetes.io/tls)")
    if denied:  # the spec: RefNotPermitted wins over InvalidCertificateRef
        problems.append(("ResolvedRefs", "RefNotPermitted", "; ".join([*denied, *invalid])[:1024]))
    elif invalid:
        problems.append(("ResolvedRefs", "InvalidCertificateRef", "; ".join(invalid)[:1024]))
    return tuple(dict.fromkeys(ok)), problems


def certificate_refs(gateway: Mapping[str, Any]) -> set[tuple[str, str]]:
    """Every core Secret the HTTPS listeners of a Gateway name, (namespace, name): what to read."""
    ns = str(gateway["metadata"]["namespace"])
    out = set()
    for spec in (gateway.get("spec") or {}).get("listeners") or []:
        if spec.get("protocol") != "HTTPS":
            continue
        for ref in (spec.get("tls") or {}).get("certificateRefs") or []:
            if ref.get("group", "") == "" and ref.get("kind", "Secret") == "Secret":
                out.add((str(ref.get("namespace") or ns), str(ref.get("name"))))
    return out


def parse_listeners(gateway: Mapping[str, Any], certs: CertInputs | None = None) -> list[Listener]:
    certs = certs or CertInputs()
    gw_ns = str((gateway.get("metadata") or {}).get("namespace") or "")
    raw = (gateway.get("spec") or {}).get("listeners") or []
    out = []
    for spec in raw:
        protocol = str(spec.get("protocol") or "")
        problems: list[tuple[str, str, str]] = []
        certificates: tuple[tuple[str, str], ...] = ()
        mode = (spec.get("tls") or {}).get("mode") or "Terminate"
        if protocol not in ROUTE_KIND_FOR_PROTOCOL:
            problems.append((
                "Accepted", "UnsupportedProtocol",
                f"protocol {protocol} is not supported by mproxy; use HTTP, HTTPS, TLS (Passthrough), TCP "
                "or UDP",
            ))
        elif protocol == "TLS" and mode != "Passthrough":
            problems.append((
                "Accepted", "UnsupportedValue",
                f"tls.mode {mode} is not supported on a TLS listener: mproxy passes TLS through to the "
                "backend (set tls.mode: Passthrough, or use an HTTPS listener to terminate TLS)",
            ))
        elif protocol == "HTTPS" and mode != "Terminate":
            problems.append((
                "Accepted", "UnsupportedValue",
                f"tls.mode {mode} is not supported on an HTTPS listener: it terminates TLS (use a TLS "
                "listener with a TLSRoute to pass TLS through)",
            ))
        elif protocol == "HTTPS":
            certificates, cert_problems = _certificates(spec, gw_ns, certs)
            problems += cert_problems
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
            certificates=certificates,
        ))
    return _conflicts(out)


def _conflicts(listeners: list[Listener]) -> list[Listener]:
    """Two listeners on one port must share a protocol; TCP (or UDP) ones cannot share a port at all, the
    others only with distinct hostnames (the edge tells them apart by SNI or Host). A UDP listener and
    the TCP-borne ones (TCP, TLS, HTTP, HTTPS) never clash: the edge binds a UDP and a TCP socket."""
    out = []
    for lst in listeners:
        others = [o for o in listeners if o is not lst and o.port == lst.port
                  and (o.protocol == "UDP") == (lst.protocol == "UDP")]
        reason = ""
        if any(o.protocol != lst.protocol for o in others):
            reason = "ProtocolConflict"
        elif any(lst.protocol in PORT_PROTOCOLS or o.hostname == lst.hostname for o in others):
            reason = "HostnameConflict"
        if reason:
            lst = replace(lst, problems=(
                *lst.problems,
                ("Conflicted", reason, f"another listener of this Gateway uses port {lst.port} ({reason})"),
            ))
        out.append(lst)
    return out


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
