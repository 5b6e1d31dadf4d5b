"""A Gateway's bindings as the sidecar config a Tunnel renders to (pure).

TLS listeners match the edge's `https` service (SNI passthrough) on the listener's port and the route's
hostnames; TCP listeners match `tcp` on the port. The connector tries routes in order and the first match
wins, so exact names come before wildcards and those before catch-alls: the most specific route wins,
as the spec asks.
"""

from __future__ import annotations

from collections.abc import Sequence

from mproxy.config.sidecar import SidecarConfig
from mproxy_operator.gateway_api.names import TLS_ROUTE
from mproxy_operator.gateway_api.params import ClassParams
from mproxy_operator.gateway_api.routes import Binding
from mproxy_operator.model import Edge, KeyRef, Route, TunnelSpec
from mproxy_operator.render import render_config
from mproxy_operator.resolve import Resolved


def connector_spec(params: ClassParams) -> TunnelSpec:
    return TunnelSpec(
        edge=Edge(urls=params.edge_urls, token=KeyRef("Secret", params.token_secret, params.token_key)),
        routes=(),
        mode="Connector",
        connector_replicas=params.replicas,
    )


def _specificity(b: Binding) -> tuple[int, int]:
    if not b.hostnames:
        return (2, 0)
    wild = all(h.startswith("*.") for h in b.hostnames)
    return (1 if wild else 0, -max(len(h) for h in b.hostnames))


def resolved_routes(bindings: Sequence[Binding]) -> list[Resolved]:
    out = []
    for b in sorted(bindings, key=_specificity):
        out.append(Resolved(
            route=Route(
                name=f"{b.route_kind.lower()}.{b.route_ns}.{b.route_name}.{b.rule}.{b.listener.name}",
                service=b.backend.host,
                port=b.backend.port,
                services=("https",) if b.route_kind == TLS_ROUTE else ("tcp",),
                ports=(b.listener.port,),
                hostnames=b.hostnames,
            ),
            host=b.backend.host,
            port=b.backend.port,
        ))
    return out


def gateway_config(params: ClassParams, bindings: Sequence[Binding]) -> SidecarConfig:
    """Validated by the sidecar's own schema; raises mproxy.config.ConfigError."""
    return render_config(connector_spec(params), resolved_routes(bindings))
