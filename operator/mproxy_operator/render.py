"""Render the sidecar config (the contract in mproxy.config.sidecar) and the ConfigMap that carries it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mproxy.config import schema
from mproxy.config.common import HttpConfig, LoggingConfig
from mproxy.config.sidecar import (
    BackendConfig,
    EdgeDialConfig,
    LimitsConfig,
    MatchConfig,
    RouteConfig,
    SidecarConfig,
    load_sidecar_config,
)
from mproxy_operator import names
from mproxy_operator.model import TunnelSpec
from mproxy_operator.resolve import Resolved


def sidecar_config(spec: TunnelSpec, resolved: list[Resolved]) -> SidecarConfig:
    """The sidecar config as the schema's own values, before the sidecar's loader checks the rules
    between fields. Unresolved routes are left out. Raises mproxy.config.ConfigError (a bad limit)."""
    edge = EdgeDialConfig(
        urls=spec.edge.urls,
        connections_per_url=spec.edge.connections_per_url,
        token_file=f"{names.TOKEN_DIR}/{names.TOKEN_FILE}",
        ca_file=f"{names.CA_DIR}/{names.CA_FILE}" if spec.edge.ca is not None else None,
        token_in=spec.edge.token_in,
        listener_groups=spec.edge.listener_groups,
    )
    routes = tuple(
        RouteConfig(
            name=r.route.name,
            match=MatchConfig(r.route.services, r.route.ports, r.route.hostnames),
            backend=BackendConfig(host=r.host, port=r.port,
                                  connect_timeout_seconds=r.route.connect_timeout_seconds,
                                  proxy_protocol=r.route.proxy_protocol),
        )
        for r in resolved
    )
    resolved_names = {r.route.name for r in resolved}
    return SidecarConfig(
        edge=edge,
        routes=routes,
        default_route=spec.default_route if spec.default_route in resolved_names else None,
        limits=schema.read(LimitsConfig, spec.limits, "limits"),
        metrics=spec.metrics,
        http=HttpConfig(f"0.0.0.0:{spec.metrics_port}"),
        logging=LoggingConfig(format="json", level=spec.log_level),
        drain_seconds=spec.drain_seconds,
    )


def sidecar_config_dict(spec: TunnelSpec, resolved: list[Resolved]) -> dict[str, Any]:
    """The camelCase mapping, before validation."""
    return sidecar_config(spec, resolved).to_dict()


def render_config(spec: TunnelSpec, resolved: list[Resolved]) -> SidecarConfig:
    """Validated with the sidecar's own schema, so the operator never ships a config the sidecar refuses.
    Raises mproxy.config.ConfigError."""
    return load_sidecar_config(sidecar_config_dict(spec, resolved))


def digest(data: object) -> str:
    """A short stable hash of JSON-able data (config, sidecar container)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_map(
    tunnel: Mapping[str, Any],
    text: str,
    *,
    name: str | None = None,
    owner: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ConfigMap owned by the Tunnel (garbage-collected with it), or by another owner (a Gateway)."""
    meta = tunnel["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name or names.config_map_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {
                "app.kubernetes.io/name": "mproxy",
                "app.kubernetes.io/component": "sidecar-config",
                "app.kubernetes.io/managed-by": names.MANAGED_BY,
                **(labels if labels is not None else {names.TUNNEL_LABEL: meta["name"]}),
            },
            "annotations": {"mproxy.dev/config-hash": digest(text)},
            "ownerReferences": [dict(owner) if owner is not None else owner_reference(tunnel)],
        },
        "data": {names.CONFIG_KEY: text},
    }


def owner_reference(
    tunnel: Mapping[str, Any], api_version: str = f"{names.GROUP}/{names.VERSION}", kind: str = names.KIND
) -> dict[str, Any]:
    meta = tunnel["metadata"]
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
