"""Entry point: `mproxy operator` (or `python -m mproxy_operator`)."""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from mproxy_operator import logs, names
from mproxy_operator.options import Options, parse

log = logging.getLogger("mproxy_operator")


def main(argv: Sequence[str] | None = None, prog: str = "mproxy operator") -> int:
    opts = parse(argv, prog)
    logs.configure(opts.log_format, opts.log_level)
    try:
        return asyncio.run(_serve(opts))
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, OSError) as exc:  # startup problems the user can fix: no traceback
        log.error("mproxy operator cannot start: %s", exc)
        return 1


def _native(opts: Options, version: dict[str, object]) -> bool:
    from mproxy_operator.inject import supports_native_sidecars

    if opts.native_sidecars != "auto":
        return opts.native_sidecars == "always"
    return supports_native_sidecars(str(version.get("major", "0")), str(version.get("minor", "0")))


async def _serve(opts: Options) -> int:
    # Heavy imports here, so `--help` and option errors stay fast.
    import kopf

    from mproxy_operator import http, webhook_certs
    from mproxy_operator.certs import CA_FILE, CERT_FILE, KEY_FILE
    from mproxy_operator.handlers import Runtime, TimedWebhookServer, build_registry
    from mproxy_operator.kube import Kube, KubeError, load_api_client
    from mproxy_operator.podspec import SidecarDefaults
    from mproxy_operator.reconcile import Context

    if opts.kubeconfig and not await asyncio.to_thread(Path(opts.kubeconfig).is_file):
        raise RuntimeError(f"--kubeconfig {opts.kubeconfig}: no such file")
    try:
        k = Kube(load_api_client(opts.kubeconfig))
        version = await asyncio.to_thread(k.version)
    except (KubeError, OSError, Exception) as exc:
        raise RuntimeError(f"cannot reach the Kubernetes API ({exc}); check --kubeconfig") from None
    native = _native(opts, version)
    log.info(
        "connected to Kubernetes %s; sidecars are %s",
        version.get("gitVersion"),
        "native (init containers with restartPolicy Always)" if native else "plain containers",
    )

    cert_dir = await asyncio.to_thread(
        webhook_certs.prepare,
        k,
        opts.namespace,
        list(opts.webhook_hosts),
        opts.webhook_cert_dir,
        opts.webhook_cert_secret,
    )
    if opts.webhook_config:
        await asyncio.to_thread(
            webhook_certs.inject_ca_bundle, k, opts.webhook_config, (cert_dir / CA_FILE).read_bytes()
        )

    host, port = opts.webhook_listen
    server = TimedWebhookServer(
        addr=host,
        port=port,
        host=opts.webhook_hosts[0],
        certfile=cert_dir / CERT_FILE,
        pkeyfile=cert_dir / KEY_FILE,
        cafile=cert_dir / CA_FILE,
    )
    ctx = Context(
        kube=k,
        native=native,
        cluster_domain=opts.cluster_domain,
        sidecar_status=opts.sidecar_status,
        defaults=SidecarDefaults(image=opts.sidecar_image, image_pull_policy=opts.sidecar_pull_policy),
    )
    gateway_api = None
    if opts.gateway_api:
        from mproxy_operator.gateway_api.reconcile import GatewayAPI

        gateway_api = GatewayAPI(kube=k, defaults=ctx.defaults, cluster_domain=opts.cluster_domain)
    rt = Runtime(
        ctx=ctx, status_interval=opts.status_interval, webhook_server=server, gateway_api=gateway_api
    )
    registry = build_registry(rt)

    ready = threading.Event()
    endpoints = http.Endpoints(http.webhook_probe_url(host, port), str(cert_dir / CA_FILE), ready.is_set)
    runner = await http.start(*opts.http_listen, endpoints)
    log.info(
        "operator endpoints on %s:%d (/healthz /readyz /metrics); webhook on %s:%d%s",
        *opts.http_listen,
        host,
        port,
        names.WEBHOOK_PATH,
    )
    # Peering: every replica answers the webhook; only the highest-priority one reconciles Tunnels.
    priority = opts.priority if opts.priority is not None else random.randint(1, 1_000_000)
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=True,
            standalone=opts.standalone,
            peering_name=None if opts.standalone else opts.peering,
            priority=priority,
            ready_flag=ready,
        )
    finally:
        await runner.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m mproxy_operator"))
