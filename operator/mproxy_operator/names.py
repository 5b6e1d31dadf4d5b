"""Names shared by the operator, its chart and its tests: API group, labels, annotations, paths."""

from __future__ import annotations

GROUP = "mproxy.dev"
VERSION = "v1alpha1"
PLURAL = "tunnels"
KIND = "Tunnel"

# Pods opt in with this label (the webhook's objectSelector); a Tunnel's selector then picks them.
INJECT_LABEL = "mproxy.dev/inject"
INJECT_ENABLED = "enabled"
# Set by the webhook on injected pods: the name of the Tunnel whose sidecar they carry.
TUNNEL_LABEL = "mproxy.dev/tunnel"
# Set on the connector Deployment and its pods.
CONNECTOR_LABEL = "mproxy.dev/connector"
# What the same Deployment carried when connector mode was called "Gateway mode" (found and removed).
LEGACY_GATEWAY_LABEL = "mproxy.dev/gateway"
MANAGED_BY = "mproxy-operator"

INJECTED_ANNOTATION = "mproxy.dev/injected"  # "<tunnel>" once the sidecar is in the pod
SIDECAR_HASH_ANNOTATION = "mproxy.dev/sidecar-hash"
ROLLED_ANNOTATION = "mproxy.dev/rolled-at"  # on pod templates: changing it rolls the workload
ROLL_REASON_ANNOTATION = "mproxy.dev/roll-reason"
FINALIZER = "mproxy.dev/finalizer"

SIDECAR_NAME = "mproxy-sidecar"
CONFIG_VOLUME = "mproxy-config"
TOKEN_VOLUME = "mproxy-token"  # noqa: S105 (a volume name)
CA_VOLUME = "mproxy-ca"
TMP_VOLUME = "mproxy-tmp"
CONFIG_DIR = "/etc/mproxy"
CONFIG_KEY = "config.yaml"
TOKEN_DIR = "/var/run/mproxy/token"  # noqa: S105 (a path)
TOKEN_FILE = "token"  # noqa: S105 (a file name)
CA_DIR = "/var/run/mproxy/ca"
CA_FILE = "ca.crt"
METRICS_PORT_NAME = "mproxy-metrics"

# The webhook URL path is the kopf handler id: keep the chart's path in step with this.
WEBHOOK_HANDLER_ID = "inject-sidecar"
WEBHOOK_PATH = "/" + WEBHOOK_HANDLER_ID


def config_map_name(tunnel: str) -> str:
    return f"mproxy-{tunnel}"


def connector_name(tunnel: str) -> str:
    return f"mproxy-connector-{tunnel}"


def legacy_gateway_name(tunnel: str) -> str:
    """The connector Deployment's name before the rename (see LEGACY_GATEWAY_LABEL)."""
    return f"mproxy-gw-{tunnel}"
