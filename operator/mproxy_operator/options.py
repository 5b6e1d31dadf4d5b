"""Command-line options of `mproxy operator` (also `python -m mproxy_operator`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Options:
    kubeconfig: str | None
    namespace: str
    webhook_listen: tuple[str, int]
    webhook_hosts: tuple[str, ...]
    webhook_cert_dir: str | None
    webhook_cert_secret: str | None
    webhook_config: str | None
    http_listen: tuple[str, int]
    sidecar_image: str
    sidecar_pull_policy: str
    native_sidecars: str
    cluster_domain: str
    status_interval: float
    sidecar_status: bool
    standalone: bool
    peering: str
    priority: int | None
    log_format: str
    log_level: str
    gateway_api: bool = False


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, e.g. 0.0.0.0:9443 (got {value!r})")
    return host.strip("[]") or "0.0.0.0", int(port)


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {value!r})") from None
    if not 0.1 <= number <= 3600:
        raise argparse.ArgumentTypeError(f"must be 0.1-3600 seconds (got {value!r})")
    return number


def build_parser(prog: str = "mproxy operator") -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run the mproxy operator: reconcile Tunnels and inject the sidecar through a mutating "
        "admission webhook.",
    )
    p.add_argument(
        "--kubeconfig",
        default=env("KUBECONFIG"),
        help="kubeconfig file (default: $KUBECONFIG, else in-cluster, else ~/.kube/config)",
    )
    p.add_argument(
        "--namespace",
        default=env("POD_NAMESPACE", "mproxy-system"),
        help="the operator's own namespace, where the webhook certificate Secret lives "
        "(default: $POD_NAMESPACE or mproxy-system)",
    )
    p.add_argument(
        "--webhook-listen",
        type=_listen,
        default=("0.0.0.0", 9443),
        metavar="HOST:PORT",
        help="where the admission webhook listens (HTTPS; default 0.0.0.0:9443)",
    )
    p.add_argument(
        "--webhook-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP the apiserver uses to reach the webhook, put in the certificate "
        "(repeatable; default: the listen address)",
    )
    p.add_argument(
        "--webhook-cert-dir",
        metavar="DIR",
        help="read tls.crt, tls.key (and ca.crt) from DIR, e.g. a cert-manager Secret volume; "
        "when they are absent, the generated certificate is written there",
    )
    p.add_argument(
        "--webhook-cert-secret",
        metavar="NAME",
        help="keep the generated certificate in this Secret of --namespace, so every replica "
        "serves the same one",
    )
    p.add_argument(
        "--webhook-config",
        metavar="NAME",
        help="MutatingWebhookConfiguration whose caBundle the operator fills in at start "
        "(leave out when cert-manager's cainjector does it)",
    )
    p.add_argument(
        "--http-listen",
        type=_listen,
        default=("0.0.0.0", 8080),
        metavar="HOST:PORT",
        help="/healthz, /readyz and /metrics (default 0.0.0.0:8080)",
    )
    p.add_argument(
        "--sidecar-image",
        default=env("MPROXY_SIDECAR_IMAGE", "ghcr.io/mproxy/mproxy:0.1.0"),
        help="sidecar image when a Tunnel does not set spec.sidecar.image",
    )
    p.add_argument(
        "--sidecar-pull-policy", default="IfNotPresent", choices=("Always", "IfNotPresent", "Never")
    )
    p.add_argument(
        "--native-sidecars",
        default="auto",
        choices=("auto", "always", "never"),
        help="inject an init container with restartPolicy Always (auto: when the server is >= 1.29)",
    )
    p.add_argument("--cluster-domain", default="cluster.local", help="DNS suffix of Service names")
    p.add_argument(
        "--status-interval",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="how often pod counts in Tunnel status are refreshed (default 30)",
    )
    p.add_argument(
        "--sidecar-status",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="on each status refresh, GET /status from every ready pod's sidecar (pod IP, spec.metrics.port) "
        "and report its edges in the Tunnel's EdgesConnected condition (the chart turns it on)",
    )
    p.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: use when only one replica runs (tests, development)",
    )
    p.add_argument("--peering", default="mproxy", help="ClusterKopfPeering name shared by the replicas")
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest active replica handles Tunnels (default: random)",
    )
    p.add_argument(
        "--gateway-api",
        action="store_true",
        help="also serve Gateway API GatewayClasses with controllerName mproxy.dev/gateway-controller, "
        "their Gateways, HTTPRoutes, TLSRoutes, TCPRoutes and UDPRoutes (the Gateway API CRDs must be "
        "installed; docs/gateway-api.md)",
    )
    p.add_argument("--log-format", default="json", choices=("json", "text"))
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def parse(argv: Sequence[str] | None, prog: str = "mproxy operator") -> Options:
    a = build_parser(prog).parse_args(argv)
    hosts = tuple(a.webhook_host) or (
        a.webhook_listen[0] if a.webhook_listen[0] != "0.0.0.0" else "127.0.0.1",
    )
    return Options(
        kubeconfig=a.kubeconfig,
        namespace=a.namespace,
        webhook_listen=a.webhook_listen,
        webhook_hosts=hosts,
        webhook_cert_dir=a.webhook_cert_dir,
        webhook_cert_secret=a.webhook_cert_secret,
        webhook_config=a.webhook_config,
        http_listen=a.http_listen,
        sidecar_image=a.sidecar_image,
        sidecar_pull_policy=a.sidecar_pull_policy,
        native_sidecars=a.native_sidecars,
        cluster_domain=a.cluster_domain,
        status_interval=a.status_interval,
        sidecar_status=a.sidecar_status,
        standalone=a.standalone,
        peering=a.peering,
        priority=a.priority,
        log_format=a.log_format,
        log_level=a.log_level,
        gateway_api=a.gateway_api,
    )
