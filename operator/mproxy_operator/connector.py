"""Connector mode: the sidecar as a Deployment of its own, owned by the Tunnel (pure builder).

(Called "Gateway mode" before Gateway API support came; `mode: Gateway` is still read as Connector.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mproxy_operator import names
from mproxy_operator.model import TunnelSpec
from mproxy_operator.podspec import SidecarDefaults, sidecar_container, sidecar_volumes
from mproxy_operator.render import owner_reference


def connector_labels(tunnel_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mproxy",
        "app.kubernetes.io/component": "connector",
        "app.kubernetes.io/instance": tunnel_name,
        names.CONNECTOR_LABEL: tunnel_name,
    }


def connector_deployment(
    tunnel: Mapping[str, Any], spec: TunnelSpec, defaults: SidecarDefaults
) -> dict[str, Any]:
    meta = tunnel["metadata"]
    name = meta["name"]
    return build_connector(
        name=names.connector_name(name),
        namespace=meta["namespace"],
        owner=owner_reference(tunnel),
        selector=connector_labels(name),
        pod_labels={names.TUNNEL_LABEL: name},
        config_map=names.config_map_name(name),
        spec=spec,
        defaults=defaults,
    )


def build_connector(
    *,
    name: str,
    namespace: str,
    owner: Mapping[str, Any],
    selector: Mapping[str, str],
    pod_labels: Mapping[str, str],
    config_map: str,
    spec: TunnelSpec,
    defaults: SidecarDefaults,
) -> dict[str, Any]:
    """The Deployment for any owner: a Tunnel in connector mode, or a Gateway (gateway_api)."""
    container = sidecar_container(spec, defaults, native=False, connector=True)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**selector, "app.kubernetes.io/managed-by": names.MANAGED_BY},
            "ownerReferences": [dict(owner)],
        },
        "spec": {
            "replicas": spec.connector_replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                # No config hash here: the sidecar reloads routes from the ConfigMap without a restart.
                "metadata": {"labels": {**selector, **pod_labels}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": int(spec.drain_seconds) + 10,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": sidecar_volumes(spec, config_map),
                },
            },
        },
    }
