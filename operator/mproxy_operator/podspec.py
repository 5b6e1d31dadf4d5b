"""The sidecar container and its volumes, built from a Tunnel (pure; shared by injection and connector)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mproxy_operator import names
from mproxy_operator.model import TunnelSpec

DEFAULT_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "10m", "memory": "32Mi"},
    "limits": {"memory": "128Mi"},
}

RESTRICTED_SECURITY_CONTEXT: Mapping[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True, slots=True)
class SidecarDefaults:
    """What the operator puts in a sidecar when the Tunnel does not say (from the operator's flags)."""

    image: str = "ghcr.io/mproxy/mproxy:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    resources: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": names.METRICS_PORT_NAME},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def sidecar_container(
    spec: TunnelSpec, defaults: SidecarDefaults, *, native: bool, connector: bool = False
) -> dict[str, Any]:
    """The container; `native` makes it a native sidecar (an init container that keeps running).

    Readiness: a connector replica is ready when its tunnel is up (/readyz). An injected sidecar is
    probed on /healthz only: its readiness counts toward the pod's, and an edge outage must not take
    the application's pods out of their in-cluster Services."""
    container: dict[str, Any] = {
        "name": names.SIDECAR_NAME,
        "image": spec.sidecar.image or defaults.image,
        "imagePullPolicy": spec.sidecar.image_pull_policy or defaults.image_pull_policy,
        "args": ["sidecar", "--config", f"{names.CONFIG_DIR}/{names.CONFIG_KEY}"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [{"name": names.METRICS_PORT_NAME, "containerPort": spec.metrics_port, "protocol": "TCP"}],
        "startupProbe": _probe("/healthz", 1, 30),
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz" if connector else "/healthz", 5, 2),
        "resources": _copy(
            spec.sidecar.resources if spec.sidecar.resources is not None else defaults.resources
        ),
        "securityContext": _copy(RESTRICTED_SECURITY_CONTEXT),
        "volumeMounts": [
            {"name": names.CONFIG_VOLUME, "mountPath": names.CONFIG_DIR, "readOnly": True},
            {"name": names.TOKEN_VOLUME, "mountPath": names.TOKEN_DIR, "readOnly": True},
            {"name": names.TMP_VOLUME, "mountPath": "/tmp"},  # noqa: S108 (a private emptyDir)
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.edge.ca is not None:
        container["volumeMounts"].insert(
            2, {"name": names.CA_VOLUME, "mountPath": names.CA_DIR, "readOnly": True}
        )
    if native:
        container["restartPolicy"] = "Always"
    return container


def sidecar_volumes(spec: TunnelSpec, config_map: str) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": names.CONFIG_VOLUME, "configMap": {"name": config_map}},
        {
            "name": names.TOKEN_VOLUME,
            "secret": {
                "secretName": spec.edge.token.name,
                "items": [{"key": spec.edge.token.key, "path": names.TOKEN_FILE}],
            },
        },
        {"name": names.TMP_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    ca = spec.edge.ca
    if ca is not None:
        items = [{"key": ca.key, "path": names.CA_FILE}]
        source = (
            {"configMap": {"name": ca.name, "items": items}}
            if ca.kind == "ConfigMap"
            else {"secret": {"secretName": ca.name, "items": items}}
        )
        volumes.insert(2, {"name": names.CA_VOLUME, **source})
    return volumes


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


OWN_VOLUMES = frozenset({names.CONFIG_VOLUME, names.TOKEN_VOLUME, names.CA_VOLUME, names.TMP_VOLUME})
