"""A Gateway's bindings as the sidecar config a Tunnel renders to, plus its HTTP routers (pure).

TLS listeners match the edge's `https` service (SNI passthrough) on the listener's port and the route's
hostnames; TCP listeners match `tcp` on the port, UDP listeners `udp` on the port (a `udp` stream is one
client address of the edge's `udp` listener; it only takes a route that lists `udp`). Each served HTTP or
HTTPS listener is one stream route (`http` on the port, or `https` on the port: the edge passes TLS
through by SNI and the connector terminates it) with the listener's hostname, pointing at one HTTP router
per listener (`httpRouters[]`, docs/sidecar.md) that holds the HTTPRoutes attached there, oldest first
(the spec's tie-break). The connector tries stream routes in order and the first match wins, so exact
names come before wildcards and those before catch-alls: the most specific route wins, as the spec asks.

Until the sidecar schema has weighted `backends:` on stream routes, a TLS/TCP/UDP rule renders its heaviest
valid backend as `backend:`; until it has `httpRouters`, HTTP and HTTPS listeners render nothing and
report Programmed False (Pending). Both are detected from the schema, so the operator never ships a
config the connector refuses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mproxy.config.sidecar import RouteConfig, SidecarConfig, load_sidecar_config
from mproxy_operator.gateway_api import names
from mproxy_operator.gateway_api.listeners import Listener
from mproxy_operator.gateway_api.names import TLS_ROUTE, UDP_ROUTE
from mproxy_operator.gateway_api.params import ClassParams
from mproxy_operator.gateway_api.routes import Binding, HttpBinding
from mproxy_operator.model import Edge, KeyRef, TunnelSpec
from mproxy_operator.render import sidecar_config_dict


def _has_field(cls: type[Any], name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cls))


WEIGHTED_BACKENDS = _has_field(RouteConfig, "backends")
HTTP_ROUTERS = _has_field(SidecarConfig, "http_routers")
HTTP_PROTOCOLS = ("HTTP", "HTTPS")


def connector_spec(params: ClassParams) -> TunnelSpec:
    return TunnelSpec(
        edge=Edge(urls=params.edge_urls, token=KeyRef("Secret", params.token_secret, params.token_key)),
        routes=(),
        mode="Connector",
        connector_replicas=params.replicas,
    )


def _specificity(hostnames: Sequence[str]) -> tuple[int, int]:
    if not hostnames:
        return (2, 0)
    wild = all(h.startswith("*.") for h in hostnames)
    return (1 if wild else 0, -max(len(h) for h in hostnames))


def _match(services: str, listener: Listener, hostnames: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"services": [services], "ports": [listener.port]}
    if hostnames:
        out["hostnames"] = list(hostnames)
    return out


STREAM_SERVICES = {TLS_ROUTE: "https", UDP_ROUTE: "udp"}  # the edge's service name; others: tcp


def _stream_route(b: Binding) -> dict[str, Any] | None:
    route: dict[str, Any] = {
        "name": f"{b.route_kind.lower()}.{b.route_ns}.{b.route_name}.{b.rule}.{b.listener.name}",
        "match": _match(STREAM_SERVICES.get(b.route_kind, "tcp"), b.listener, b.hostnames),
    }
    if WEIGHTED_BACKENDS:
        route["backends"] = [
            {"host": x.host, "port": x.port, "weight": x.weight} if x.valid
            else {"weight": x.weight, "refuse": True}
            for x in b.backends
        ]
        return route
    best = b.backend
    if best is None:
        return None  # nothing to dial: unmatched streams are refused
    route["backend"] = {"host": best.host, "port": best.port}
    return route


def cert_paths(ns: str, name: str) -> dict[str, str]:
    crt, key = names.cert_files(ns, name)
    return {"certFile": f"{names.CERTS_DIR}/{crt}", "keyFile": f"{names.CERTS_DIR}/{key}"}


def http_router(listener: Listener, bindings: Sequence[HttpBinding]) -> dict[str, Any]:
    router: dict[str, Any] = {
        "name": listener.name,
        "routes": [
            {"name": f"httproute.{b.route_ns}.{b.route_name}", "hostnames": list(b.hostnames),
             "rules": [dict(r) for r in b.rules]}
            for b in bindings if b.listener.name == listener.name
        ],
    }
    if listener.protocol == "HTTPS":
        router["tls"] = {"certificates": [cert_paths(ns, n) for ns, n in listener.certificates]}
    return router


def _own_address_defaults(listeners: Sequence[Listener]) -> list[tuple[tuple[int, int], dict[str, Any]]]:
    """A Gateway with an address of its own (a listener group) answers every request to its HTTP and
    HTTPS ports: a Host (or SNI) no listener's hostname matches goes to the router of the port's first
    listener, whose routes do not match it either, so it gets 404 (the spec's answer) instead of being
    refused. Without a group the port is shared with other Gateways and such a catch-all would take
    their names; ports with a catch-all listener already need none."""
    out: list[tuple[tuple[int, int], dict[str, Any]]] = []
    seen: set[tuple[str, int]] = set()
    served = [lst for lst in listeners if lst.protocol in HTTP_PROTOCOLS and lst.served]
    covered = {(lst.protocol, lst.port) for lst in served if not lst.hostname}
    for lst in served:
        key = (lst.protocol, lst.port)
        if key in covered or key in seen:
            continue
        seen.add(key)
        out.append((_specificity(()), {
            "name": f"{lst.protocol.lower()}.{lst.port}.unmatched",
            "match": _match(lst.protocol.lower(), lst, ()),
            "http": lst.name,
        }))
    return out


def gateway_config_dict(
    params: ClassParams, bindings: Sequence[Binding | HttpBinding], listeners: Sequence[Listener] = (),
    group: str | None = None,
) -> dict[str, Any]:
    """The camelCase config before validation: the Tunnel renderer's base plus this Gateway's routes;
    with a listener group (addresses.py), the connector asks the edge for that group's clients only."""
    base = sidecar_config_dict(connector_spec(params), [])
    if group is not None:
        base["edge"]["listenerGroups"] = [group]
    keyed: list[tuple[tuple[int, int], dict[str, Any]]] = []
    for b in bindings:
        if isinstance(b, Binding) and (route := _stream_route(b)) is not None:
            keyed.append((_specificity(b.hostnames), route))
    routers = []
    if HTTP_ROUTERS:
        http = [b for b in bindings if isinstance(b, HttpBinding)]
        for lst in listeners:
            if lst.protocol not in HTTP_PROTOCOLS or not lst.served:
                continue
            hosts = (lst.hostname,) if lst.hostname else ()
            keyed.append((_specificity(hosts), {
                "name": f"{lst.protocol.lower()}.{lst.name}",
                "match": _match(lst.protocol.lower(), lst, hosts),
                "http": lst.name,
            }))
            routers.append(http_router(lst, http))
        if group is not None:
            keyed += _own_address_defaults(listeners)
    keyed.sort(key=lambda kv: kv[0])  # stable: the oldest route first within one specificity
    base["routes"] = [r for _k, r in keyed]
    if routers:
        base["httpRouters"] = routers
    return base


def gateway_config(
    params: ClassParams, bindings: Sequence[Binding | HttpBinding], listeners: Sequence[Listener] = (),
    group: str | None = None,
) -> SidecarConfig:
    """Validated by the sidecar's own schema; raises mproxy.config.ConfigError."""
    return load_sidecar_config(gateway_config_dict(params, bindings, listeners, group))


def certs_secret(
    gateway: Mapping[str, Any],
    owner: Mapping[str, Any],
    secrets: Mapping[tuple[str, str], Mapping[str, Any]],
    refs: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """The Secret the connector mounts at CERTS_DIR: each referenced Secret's tls.crt and tls.key as
    `<namespace>.<name>.crt/.key` (the values are copied, base64 as they are; never logged)."""
    meta = gateway["metadata"]
    data = {}
    for ns, name in sorted(set(refs)):
        src = secrets[(ns, name)].get("data") or {}
        crt, key = names.cert_files(ns, name)
        data[crt], data[key] = src["tls.crt"], src["tls.key"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.certs_secret_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {"app.kubernetes.io/name": "mproxy", "app.kubernetes.io/component": "gateway-certs",
                       names.GATEWAY_LABEL: meta["name"]},
            "ownerReferences": [dict(owner)],
        },
        "data": data,
    }


def with_certs(deployment: dict[str, Any], secret_name: str) -> dict[str, Any]:
    """The connector Deployment with the certs Secret mounted read-only at CERTS_DIR."""
    pod = deployment["spec"]["template"]["spec"]
    pod["volumes"] = [*(pod.get("volumes") or []), {
        "name": names.CERTS_VOLUME,
        "secret": {"secretName": secret_name},
    }]
    for c in pod["containers"]:
        c["volumeMounts"] = [*(c.get("volumeMounts") or []),
                             {"name": names.CERTS_VOLUME, "mountPath": names.CERTS_DIR, "readOnly": True}]
    return deployment
